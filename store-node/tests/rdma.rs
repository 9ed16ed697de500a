//! The RDMA verbs transport (feature `rdma`) on the device that
//! `HEARTH_RDMA_DEVICE` names: the transport contract (control messages
//! whole and in order, large ones fragmented; one-sided reads of the
//! node's registered buffers; an unknown region refused) and the
//! conformance suite through the `remote` backend over verbs. Without a
//! device each test prints that it did not run, and why.
#![cfg(feature = "rdma")]

use bytes::Bytes;
use hearth_blob::conformance::{self, LIMIT};
use hearth_blob::rdma::{VerbsDevice, VerbsTransport, not_run_reason, rdma_connector};
use hearth_blob::regions::{BufferPool, RegionError, RegionTable, RemoteSlice};
use hearth_blob::transport::{Transport, TransportError};
use hearth_blob::{BlobLimits, BlobStore};
use hearth_store_node::serve::serve_rdma;
use std::sync::Arc;
use std::time::Duration;

/// The device to use, or `None` after printing why the test does not run.
fn device() -> Option<Arc<VerbsDevice>> {
    if let Some(reason) = not_run_reason() {
        println!("{reason}");
        return None;
    }
    let name = std::env::var("HEARTH_RDMA_DEVICE").unwrap();
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

    // One-sided reads of the node's registered buffer, two in flight.
    let buffer = pool.take().unwrap();
    let data = conformance::pattern(200_000, 7);
    let slice = buffer.fill(&data);
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
    drop(buffer);
    assert_eq!(pool.stats().in_use, 0);

    // The peer going away closes the connection.
    drop(server);
    assert!(matches!(
        client.recv().await,
        Err(TransportError::Closed(_))
    ));
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
    let remote = BlobStore::new(
        "remote",
        Arc::new(hearth_blob::remote::RemoteBackend::new(rdma_connector(
            device,
            addr,
            Duration::from_secs(5),
        ))),
        limits,
    );
    conformance::run(&remote).await;
    server.abort();
    assert_eq!(pool.stats().in_use, 0, "every registered buffer went back");
}
