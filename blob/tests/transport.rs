//! The transport contract on each implementation: control messages in
//! order, one-sided reads and writes within the peer's regions (refused
//! otherwise, and then the connection is done), reads completing in order,
//! a peer that
//! goes away, (loopback) a completion that fails, and (TCP) a peer that
//! sends faster than it is served, held back by the socket.

use bytes::Bytes;
use hearth_blob::regions::{BufferPool, RegionError, RegionTable, RemoteAccess, RemoteSlice};
use hearth_blob::transport::loopback::{self, LoopbackTransport};
use hearth_blob::transport::tcp::TcpTransport;
use hearth_blob::transport::{Transport, TransportError};
use std::sync::Arc;

/// A connected (client, server) pair whose server side registered `regions`.
async fn tcp_pair(regions: Arc<RegionTable>) -> (TcpTransport, TcpTransport) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (
        TcpTransport::new(client.unwrap(), Arc::new(RegionTable::default())),
        TcpTransport::new(accepted.unwrap().0, regions),
    )
}

fn loopback_pair(regions: Arc<RegionTable>) -> (LoopbackTransport, LoopbackTransport) {
    loopback::pair(Arc::new(RegionTable::default()), regions)
}

/// A (client, server) pair of each kind, loopback then TCP.
async fn both_pairs(regions: &Arc<RegionTable>) -> Vec<(Box<dyn Transport>, Box<dyn Transport>)> {
    let (loop_client, loop_server) = loopback_pair(regions.clone());
    let (tcp_client, tcp_server) = tcp_pair(regions.clone()).await;
    vec![
        (Box::new(loop_client), Box::new(loop_server)),
        (Box::new(tcp_client), Box::new(tcp_server)),
    ]
}

async fn the_contract(client: &dyn Transport, server: &dyn Transport, pool: &Arc<BufferPool>) {
    // Control messages, whole and in order, both ways.
    for i in 0..3u8 {
        client
            .send(Bytes::from(vec![i; 1000 * i as usize + 1]))
            .await
            .unwrap();
    }
    for i in 0..3u8 {
        assert_eq!(server.recv().await.unwrap(), vec![i; 1000 * i as usize + 1]);
    }
    server.send(Bytes::from_static(b"ready")).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), &b"ready"[..]);

    // One-sided reads of the server's registered buffers, two in flight.
    let first = pool.take().unwrap();
    let second = pool.take().unwrap();
    let a = first.fill(&vec![0xAA; 100_000]);
    let b = second.fill(b"the second buffer");
    let (read_a, read_b) = tokio::join!(
        client.read(RemoteSlice {
            offset: 50_000,
            len: 50_000,
            ..a
        }),
        client.read(RemoteSlice {
            offset: 4,
            len: 6,
            ..b
        }),
    );
    let into_a = read_a.unwrap();
    assert_eq!(into_a.len(), 50_000);
    assert!(into_a.iter().all(|&x| x == 0xAA));
    assert_eq!(&read_b.unwrap()[..], b"second");

    // One-sided writes into a buffer the server opened for them, granted.
    let third = pool.take().unwrap();
    let open = server
        .grant(third.open_for_writes(), RemoteAccess::Write)
        .await
        .unwrap();
    let open = open.slice();
    client
        .write(RemoteSlice { len: 5, ..open }, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    client
        .write(
            RemoteSlice {
                offset: 5,
                len: 6,
                ..open
            },
            Bytes::from_static(b", pool"),
        )
        .await
        .unwrap();
    assert_eq!(&third.seal(11).unwrap()[..], b"hello, pool");
    drop(third);

    // A released buffer's old key is refused, and the connection is done.
    drop(first);
    match client.read(RemoteSlice { len: 10, ..a }).await {
        Err(TransportError::Refused(RegionError::WrongKey(region))) => assert_eq!(region, a.region),
        other => panic!("expected a wrong-key refusal, got {other:?}"),
    }
    assert!(matches!(
        client.read(RemoteSlice { len: 6, ..b }).await,
        Err(TransportError::Closed(_))
    ));
    drop(second);
    assert_eq!(pool.stats().in_use, 0, "every buffer went back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_keeps_the_transport_contract() {
    let regions = Arc::new(RegionTable::default());
    let pool = BufferPool::new(regions.clone(), 128 * 1024, 4);
    let (client, server) = loopback_pair(regions);
    the_contract(&client, &server, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keeps_the_transport_contract() {
    let regions = Arc::new(RegionTable::default());
    let pool = BufferPool::new(regions.clone(), 128 * 1024, 4);
    let (client, server) = tcp_pair(regions).await;
    the_contract(&client, &server, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_bounds_reads_and_writes_to_read_only_buffers_are_refused() {
    let regions = Arc::new(RegionTable::default());
    let pool = BufferPool::new(regions.clone(), 1024, 1);
    let buffer = pool.take().unwrap();
    let slice = buffer.fill(b"0123456789");
    for (client, _server) in both_pairs(&regions).await {
        let refused = client
            .write(RemoteSlice { len: 4, ..slice }, Bytes::from_static(b"evil"))
            .await;
        assert!(
            matches!(
                refused,
                Err(TransportError::Refused(RegionError::NotOpen {
                    access: RemoteAccess::Write,
                    ..
                }))
            ),
            "{}: {refused:?}",
            client.kind()
        );
    }
    assert_eq!(
        buffer.advertise().0.len,
        10,
        "the refused write changed nothing"
    );
    for (client, _server) in both_pairs(&regions).await {
        let refused = client
            .read(RemoteSlice {
                offset: 5,
                len: 8,
                ..slice
            })
            .await;
        assert!(
            matches!(
                refused,
                Err(TransportError::Refused(RegionError::OutOfBounds { .. }))
            ),
            "{}: {refused:?}",
            client.kind()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_away_closes_pending_and_later_calls() {
    let regions = Arc::new(RegionTable::default());
    let (client, server) = tcp_pair(regions.clone()).await;
    drop(server);
    assert!(matches!(
        client.recv().await,
        Err(TransportError::Closed(_))
    ));
    let slice = RemoteSlice {
        region: 1,
        key: 1,
        offset: 0,
        len: 4,
    };
    assert!(matches!(
        client.read(slice).await,
        Err(TransportError::Closed(_))
    ));

    let (client, server) = loopback_pair(regions);
    drop(server);
    assert!(matches!(
        client.recv().await,
        Err(TransportError::Closed(_))
    ));
    assert!(matches!(
        client.read(slice).await,
        Err(TransportError::Closed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_completion_is_an_error_and_ends_the_connection() {
    let regions = Arc::new(RegionTable::default());
    let pool = BufferPool::new(regions.clone(), 64, 1);
    let buffer = pool.take().unwrap();
    let slice = buffer.fill(b"data");
    let (client, _server) = loopback_pair(regions);
    client.fail_next_read();
    let failed = client.read(slice).await;
    assert!(
        matches!(failed, Err(TransportError::Closed(ref m)) if m.contains("completion")),
        "{failed:?}"
    );
    assert!(matches!(
        client.read(slice).await,
        Err(TransportError::Closed(_))
    ));
    assert!(matches!(
        client.send(Bytes::from_static(b"x")).await,
        Err(TransportError::Closed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_faster_than_it_is_served_is_held_back_and_nothing_is_lost() {
    use hearth_blob::transport::tcp::QUEUED_MESSAGES;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    const FRAME: usize = 1 << 20;
    const FRAMES: usize = 200;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let server = TcpTransport::new(accepted.unwrap().0, Arc::new(RegionTable::default()));
    // A raw peer writes 200 control frames of 1 MiB as fast as the socket
    // takes them; the server does not `recv` yet.
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        let mut client = client.unwrap();
        tokio::spawn(async move {
            for i in 0..FRAMES {
                let mut frame = Vec::with_capacity(5 + FRAME);
                frame.extend_from_slice(&((FRAME + 1) as u32).to_le_bytes());
                frame.push(0); // a control message
                frame.extend(std::iter::repeat_n(i as u8, FRAME));
                client.write_all(&frame).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
            client
        })
    };
    // Wait until the writer makes no more progress: the server's queue
    // and the socket buffers are full.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    // Taken: QUEUED_MESSAGES frames, one in the reader's hands, and what
    // the kernel's socket buffers hold at most (their sysctl maxima);
    // never all 200 MiB.
    let kernel_max = |sysctl: &str| -> usize {
        let text = std::fs::read_to_string(sysctl).unwrap();
        text.split_whitespace().last().unwrap().parse().unwrap()
    };
    let buffered =
        kernel_max("/proc/sys/net/ipv4/tcp_rmem") + kernel_max("/proc/sys/net/ipv4/tcp_wmem");
    let bound = QUEUED_MESSAGES + 2 + buffered.div_ceil(FRAME);
    assert!(bound < FRAMES, "this machine's socket buffers hold it all");
    let held_back = sent.load(Ordering::SeqCst);
    assert!(
        held_back <= bound,
        "the server took {held_back} MiB it had not asked for (at most {bound})"
    );
    assert!(!writer.is_finished());
    // Served now, everything arrives, whole and in order.
    for i in 0..FRAMES {
        let message = server.recv().await.unwrap();
        assert_eq!(message.len(), FRAME);
        assert!(message.iter().all(|&b| b == i as u8), "frame {i}");
    }
    writer.await.unwrap();
}
