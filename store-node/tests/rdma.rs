//! The RDMA verbs transport (feature `rdma`) on the device that
//! `HEARTH_RDMA_DEVICE` names (soft-RoCE `rxe0` in tests/rdma-vm): the
//! transport contract (control messages whole and in order, large ones
//! fragmented; one-sided reads and writes of the node's registered
//! buffers through granted memory windows; an unknown region refused),
//! what the device itself refuses (a key no longer granted, bytes outside
//! a grant, a grant used from another connection, a write through a read
//! grant), and the conformance suite through the `remote` backend over
//! verbs, writes one-sided and as messages. Without a device each test
//! prints that it did not run, and why (and fails under CI).
#![cfg(feature = "rdma")]

use bytes::Bytes;
use hearth_blob::conformance::{self, LIMIT};
use hearth_blob::rdma::{VerbsDevice, VerbsTransport, device_for_tests, rdma_connector};
use hearth_blob::regions::{BufferPool, RegionError, RegionTable, RemoteAccess, RemoteSlice};
use hearth_blob::remote::{RemoteBackend, WriteMode};
use hearth_blob::transport::{Transport, TransportError};
use hearth_blob::{BlobLimits, BlobStore};
use hearth_store_node::serve::serve_rdma;
use std::sync::Arc;
use std::time::Duration;

/// The device to use, or `None` after printing why the test does not run.
fn device() -> Option<Arc<VerbsDevice>> {
    let name = device_for_tests()?;
    Some(VerbsDevice::open(&name).unwrap_or_else(|e| panic!("HEARTH_RDMA_DEVICE={name}: {e}")))
}

/// A connected pair: the first end reads `second_regions`.
async fn pair(
    device: &Arc<VerbsDevice>,
    second_regions: Arc<RegionTable>,
) -> (VerbsTransport, VerbsTransport) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = {
        let device = device.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            VerbsTransport::establish(device, socket, second_regions)
                .await
                .unwrap()
        })
    };
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = VerbsTransport::establish(device.clone(), socket, Arc::new(RegionTable::default()))
        .await
        .unwrap();
    (first, accepting.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_keep_the_transport_contract() {
    let Some(device) = device() else { return };
    let regions = Arc::new(RegionTable::with_registrar(device.clone()));
    let pool = BufferPool::new(regions.clone(), 256 * 1024, 4);
    let (client, server) = pair(&device, regions).await;

    // Control messages, small and larger than one fragment, in order.
    let big = Bytes::from(conformance::pattern(300_000, 5));
    client.send(Bytes::from_static(b"hello")).await.unwrap();
    client.send(big.clone()).await.unwrap();
    client.send(Bytes::new()).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), &b"hello"[..]);
    assert_eq!(server.recv().await.unwrap(), big);
    assert!(server.recv().await.unwrap().is_empty());

    // One-sided reads of the node's registered buffer, granted, two in
    // flight.
    let buffer = pool.take().unwrap();
    let data = conformance::pattern(200_000, 7);
    let grant = server
        .grant(buffer.fill(&data), RemoteAccess::Read)
        .await
        .unwrap();
    let slice = grant.slice();
    let (whole, part) = tokio::join!(
        client.read(slice),
        client.read(RemoteSlice {
            offset: 1000,
            len: 10,
            ..slice
        })
    );
    assert_eq!(whole.unwrap(), data);
    assert_eq!(&part.unwrap()[..], &data[1000..1010]);

    // One-sided writes into a buffer granted for them.
    let target = pool.take().unwrap();
    let open = server
        .grant(target.open_for_writes(), RemoteAccess::Write)
        .await
        .unwrap();
    let written = Bytes::from(conformance::pattern(100_000, 9));
    client
        .write(
            RemoteSlice {
                len: written.len() as u64,
                ..open.slice()
            },
            written.clone(),
        )
        .await
        .unwrap();
    client
        .write(
            RemoteSlice {
                offset: 100_000,
                len: 5,
                ..open.slice()
            },
            Bytes::from_static(b"tail!"),
        )
        .await
        .unwrap();
    drop(open);
    let sealed = target.seal(100_005).unwrap();
    assert_eq!(&sealed[..100_000], &written[..]);
    assert_eq!(&sealed[100_000..], b"tail!");
    drop(target);

    // A region the node never registered is refused.
    let unknown = client
        .read(RemoteSlice {
            region: u32::MAX,
            ..slice
        })
        .await;
    assert!(
        matches!(
            unknown,
            Err(TransportError::Refused(RegionError::Unknown(_)))
        ),
        "{unknown:?}"
    );
    drop((grant, buffer));
    assert_eq!(pool.stats().in_use, 0);

    // The peer going away closes the connection.
    drop(server);
    assert!(matches!(
        client.recv().await,
        Err(TransportError::Closed(_))
    ));
}

/// Expects the device's refusal of `slice`, and the connection done after.
async fn refused_by_the_device(client: &VerbsTransport, slice: RemoteSlice, what: &str) {
    let refused = client.read(slice).await;
    assert!(
        matches!(
            refused,
            Err(TransportError::Refused(RegionError::RefusedByDevice(region))) if region == slice.region
        ),
        "{what}: {refused:?}"
    );
    assert!(
        matches!(client.read(slice).await, Err(TransportError::Closed(_))),
        "{what}: the connection is done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_refuses_stale_keys_bytes_outside_a_grant_and_other_connections() {
    let Some(device) = device() else { return };
    let regions = Arc::new(RegionTable::with_registrar(device.clone()));
    let pool = BufferPool::new(regions.clone(), 256 * 1024, 4);
    let data = conformance::pattern(100_000, 3);

    // Bytes past the grant (100,000 granted of a 256 KiB buffer that an
    // earlier take filled): a device that checks a window's bounds refuses
    // them; soft-RoCE checks only the registration's, and there the node's
    // zeros are all there is (never the earlier take's bytes). Past the
    // buffer's end, every device refuses.
    let (client, server) = pair(&device, regions.clone()).await;
    let earlier = pool.take().unwrap();
    let region = earlier.fill(&[0xEE; 256 * 1024]).region;
    drop(earlier);
    let buffer = pool.take().unwrap();
    let grant = server
        .grant(buffer.fill(&data), RemoteAccess::Read)
        .await
        .unwrap();
    assert_eq!(grant.slice().region, region, "the same buffer, taken again");
    assert_eq!(client.read(grant.slice()).await.unwrap(), data);
    let past_the_grant = RemoteSlice {
        offset: 99_000,
        len: 2_000,
        ..grant.slice()
    };
    match client.read(past_the_grant).await {
        Err(TransportError::Refused(RegionError::RefusedByDevice(_))) => {
            println!("{}: refused bytes past the grant", device.name());
            drop((client, server));
        }
        Ok(bytes) => {
            assert_eq!(&bytes[..1000], &data[99_000..]);
            assert!(
                bytes[1000..].iter().all(|&b| b == 0),
                "an earlier take's bytes past the grant"
            );
            refused_by_the_device(
                &client,
                RemoteSlice {
                    offset: 256 * 1024 - 10,
                    len: 100,
                    ..grant.slice()
                },
                "bytes past the buffer's end",
            )
            .await;
        }
        Err(other) => panic!("bytes past the grant: {other:?}"),
    }
    drop((grant, buffer));

    // A key whose grant was closed (the buffer went back to the pool).
    let (client, server) = pair(&device, regions.clone()).await;
    let buffer = pool.take().unwrap();
    let grant = server
        .grant(buffer.fill(&data), RemoteAccess::Read)
        .await
        .unwrap();
    let stale = grant.slice();
    assert_eq!(client.read(stale).await.unwrap(), data);
    drop((grant, buffer));
    refused_by_the_device(&client, stale, "a key no longer granted").await;
    drop((client, server));

    // A key granted to another connection (a type 2 window belongs to the
    // queue pair it was bound on).
    let (client, server) = pair(&device, regions.clone()).await;
    let (stranger, _stranger_server) = pair(&device, regions.clone()).await;
    let buffer = pool.take().unwrap();
    let grant = server
        .grant(buffer.fill(&data), RemoteAccess::Read)
        .await
        .unwrap();
    refused_by_the_device(&stranger, grant.slice(), "another connection's grant").await;
    assert_eq!(
        client.read(grant.slice()).await.unwrap(),
        data,
        "the grantee still reads"
    );
    drop((grant, buffer, client, server));

    // A write through a read grant.
    let (client, server) = pair(&device, regions.clone()).await;
    let buffer = pool.take().unwrap();
    let grant = server
        .grant(buffer.fill(&data), RemoteAccess::Read)
        .await
        .unwrap();
    let written = client
        .write(
            RemoteSlice {
                len: 4,
                ..grant.slice()
            },
            Bytes::from_static(b"evil"),
        )
        .await;
    assert!(
        matches!(
            written,
            Err(TransportError::Refused(RegionError::RefusedByDevice(_)))
        ),
        "a write through a read grant: {written:?}"
    );
    assert_eq!(buffer.advertise().0.len, 100_000);
    drop((grant, buffer, client, server));
    assert_eq!(pool.stats().in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_over_verbs_passes_the_conformance_suite() {
    let Some(device) = device() else { return };
    let dir = tempfile::tempdir().unwrap();
    let limits = BlobLimits {
        max_object_bytes: LIMIT,
        ..Default::default()
    };
    let node = BlobStore::new(
        "node",
        Arc::new(hearth_blob::fs::FsBackend::open(dir.path()).unwrap()),
        limits,
    );
    let regions = Arc::new(RegionTable::with_registrar(device.clone()));
    let pool = BufferPool::new(regions.clone(), 256 * 1024, 16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_rdma(
        listener,
        device.clone(),
        node,
        pool.clone(),
        regions,
        hearth_store_node::serve::ServeOptions::default(),
    ));
    // Writes one-sided and as messages (the default).
    for mode in [WriteMode::OneSided, WriteMode::Messages] {
        let remote = BlobStore::new(
            "remote",
            Arc::new(
                RemoteBackend::new(rdma_connector(device.clone(), addr, Duration::from_secs(5)))
                    .with_write_mode(mode),
            ),
            limits,
        );
        conformance::run(&remote).await;
        drop(remote);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            pool.stats().in_use,
            0,
            "{mode:?}: every registered buffer went back"
        );
    }
    server.abort();
}
