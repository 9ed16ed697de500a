//! The `remote` backend against a storage node (serving an `fs` store) over
//! TCP and over the in-process loopback transport: the conformance suite,
//! a node that is down or goes down, and a client that goes away mid-read
//! (its registered buffers go back: no leak).

use futures_util::StreamExt;
use hearth_blob::conformance::{self, LIMIT};
use hearth_blob::fs::FsBackend;
use hearth_blob::regions::{BufferPool, RegionTable};
use hearth_blob::remote::{Connector, RemoteBackend, tcp_connector};
use hearth_blob::{BlobError, BlobLimits, BlobStore, ByteRange};
use hearth_store_node::serve::serve_tcp;
use std::sync::Arc;
use std::time::Duration;

fn limits() -> BlobLimits {
    BlobLimits {
        max_object_bytes: LIMIT,
        ..Default::default()
    }
}

/// A storage node: an fs store and its registered read buffers.
struct Node {
    store: BlobStore,
    regions: Arc<RegionTable>,
    pool: Arc<BufferPool>,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let regions = Arc::new(RegionTable::default());
    Node {
        store: BlobStore::new(
            "node",
            Arc::new(FsBackend::open(dir.path()).unwrap()),
            limits(),
        ),
        pool: BufferPool::new(regions.clone(), 256 * 1024, 16),
        regions,
        _dir: dir,
    }
}

fn remote(connect: Connector) -> BlobStore {
    BlobStore::new("remote", Arc::new(RemoteBackend::new(connect)), limits())
}

fn loopback_connector(node: &Node) -> Connector {
    hearth_store_node::serve::loopback_connector(
        node.store.clone(),
        node.pool.clone(),
        node.regions.clone(),
    )
}

async fn tcp_node(
    node: &Node,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_tcp(
        listener,
        node.store.clone(),
        node.pool.clone(),
        node.regions.clone(),
    ));
    (addr, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_over_loopback_passes_the_conformance_suite() {
    let node = node();
    conformance::run(&remote(loopback_connector(&node))).await;
    assert_eq!(node.pool.stats().in_use, 0, "no read buffer left taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_over_tcp_passes_the_conformance_suite() {
    let node = node();
    let (addr, _server) = tcp_node(&node).await;
    conformance::run(&remote(tcp_connector(addr, Duration::from_secs(5)))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(node.pool.stats().in_use, 0, "no read buffer left taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_at_start_or_mid_read_is_unavailable() {
    // Nothing listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let store = remote(tcp_connector(addr, Duration::from_secs(2)));
    match store.container_info("c").await {
        Err(BlobError::Unavailable(message)) => {
            assert!(message.contains(&addr.to_string()), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // The node goes away while a read streams.
    let node = node();
    let (addr, server) = tcp_node(&node).await;
    let store = remote(tcp_connector(addr, Duration::from_secs(2)));
    store.create_container("c").await.unwrap();
    store
        .put_bytes("c", "big", conformance::pattern(2 << 20, 1))
        .await
        .unwrap();
    let (_, mut body) = store.get("c", "big", ByteRange::ALL).await.unwrap();
    body.next().await.unwrap().unwrap();
    server.abort();
    drop(node);
    let mut failed = None;
    while let Some(chunk) = body.next().await {
        if let Err(error) = chunk {
            failed = Some(error);
            break;
        }
    }
    // The accept loop is gone, but the connection's task may finish the
    // read; what must not happen is a silent short read. Either the whole
    // object came, or an Unavailable error did.
    if let Some(error) = failed {
        assert!(matches!(error, BlobError::Unavailable(_)), "{error:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_read_frees_the_nodes_buffers() {
    let node = node();
    let (addr, _server) = tcp_node(&node).await;
    let store = remote(tcp_connector(addr, Duration::from_secs(2)));
    store.create_container("c").await.unwrap();
    store
        .put_bytes("c", "big", conformance::pattern(4 << 20, 2))
        .await
        .unwrap();
    for _ in 0..5 {
        let (_, mut body) = store.get("c", "big", ByteRange::ALL).await.unwrap();
        body.next().await.unwrap().unwrap();
        drop(body);
    }
    // Each abandoned read held one buffer until its connection closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.pool.stats().in_use > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "leaked: {:?}",
            node.pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.pool.stats().registered <= 16);
    // And the node still serves.
    assert_eq!(
        store
            .get_bytes("c", "big", ByteRange { start: 0, end: 3 })
            .await
            .unwrap(),
        conformance::pattern(4, 2)
    );
}
