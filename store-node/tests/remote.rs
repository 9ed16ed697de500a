//! The `remote` backend against a storage node (serving an `fs` store) over
//! TCP and over the in-process loopback transport: the conformance suite
//! (writes as messages and one-sided), a node that is down or goes down, a
//! client that goes away mid-read or mid-write (its registered buffers go
//! back: no leak), leases on read and write buffers, and a node that serves
//! only the hosts it knows, each in its scope.

mod common;

use common::{last_word, limits, remote_store, say_hello};
use futures_util::StreamExt;
use hearth_blob::conformance;
use hearth_blob::fs::FsBackend;
use hearth_blob::regions::{BufferPool, RegionTable};
use hearth_blob::remote::{
    Connector, RemoteBackend, Reply, Request, WriteMode, decode, encode, tcp_connector,
};
use hearth_blob::{BlobError, BlobStore, ByteRange};
use hearth_store_node::serve::{ServeOptions, serve_tcp_with};
use std::sync::Arc;
use std::time::Duration;

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
    remote_store(connect, None)
}

/// A store on `connect` that writes one-sided into the node's buffers.
fn remote_one_sided(connect: Connector) -> BlobStore {
    BlobStore::new(
        "remote",
        Arc::new(RemoteBackend::new(connect).with_write_mode(WriteMode::OneSided)),
        limits(),
    )
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
    tcp_node_with(node, ServeOptions::default()).await
}

async fn tcp_node_with(
    node: &Node,
    options: ServeOptions,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_tcp_with(
        listener,
        node.store.clone(),
        node.pool.clone(),
        node.regions.clone(),
        options,
    ));
    (addr, server)
}

/// Connectors to `node` served with `options` over TCP and over loopback,
/// and the task of the TCP accept loop.
async fn tcp_and_loopback(
    node: &Node,
    options: ServeOptions,
) -> (
    Connector,
    Connector,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (addr, server) = tcp_node_with(node, options.clone()).await;
    let over_loopback = hearth_store_node::serve::loopback_connector_with(
        node.store.clone(),
        node.pool.clone(),
        node.regions.clone(),
        options,
    );
    (
        tcp_connector(addr, Duration::from_secs(2)),
        over_loopback,
        server,
    )
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
async fn one_sided_writes_pass_the_conformance_suite_over_loopback_and_tcp() {
    let node = node();
    let (over_tcp, over_loopback, _server) = tcp_and_loopback(&node, ServeOptions::default()).await;
    for connect in [over_loopback, over_tcp] {
        conformance::run(&remote_one_sided(connect)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(node.pool.stats().in_use, 0, "no buffer left taken");
    }
}

/// Starts a one-sided write of `name` on a raw connection and returns the
/// node's first offer.
async fn take_a_write_offer(
    connect: &Connector,
    name: &str,
) -> (
    Arc<dyn hearth_blob::transport::Transport>,
    hearth_blob::regions::RemoteSlice,
) {
    let transport = connect().await.unwrap();
    say_hello(&*transport, None).await;
    transport
        .send(encode(&Request::WriteInto {
            container: "c".into(),
            name: name.into(),
        }))
        .await
        .unwrap();
    match decode::<Reply>(&transport.recv().await.unwrap()).unwrap() {
        Reply::Offer { region, key, len } => (
            transport,
            hearth_blob::regions::RemoteSlice {
                region,
                key,
                offset: 0,
                len,
            },
        ),
        other => panic!("expected an offer, got {other:?}"),
    }
}

/// Writes `bytes` into `offer` and says so, with `crc32c` for them.
async fn write_and_say(
    transport: &dyn hearth_blob::transport::Transport,
    offer: hearth_blob::regions::RemoteSlice,
    bytes: &'static [u8],
    crc32c: u32,
    last: bool,
) {
    transport
        .write(
            hearth_blob::regions::RemoteSlice {
                len: bytes.len() as u64,
                ..offer
            },
            bytes::Bytes::from_static(bytes),
        )
        .await
        .unwrap();
    transport
        .send(encode(&Request::Wrote {
            len: bytes.len() as u64,
            crc32c,
            last,
        }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sided_writes_are_checked_leased_and_leave_nothing_when_cut_short() {
    let options = ServeOptions {
        lease_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let node = node();
    let (over_tcp, over_loopback, _server) = tcp_and_loopback(&node, options).await;
    remote(over_tcp.clone())
        .create_container("c")
        .await
        .unwrap();
    for connect in [&over_loopback, &over_tcp] {
        // Bytes that do not match the checksum the client gives: corrupt,
        // nothing stored, and the connection serves on.
        let (transport, offer) = take_a_write_offer(connect, "bad-crc").await;
        write_and_say(&*transport, offer, b"hello", crc32c::crc32c(b"hellO"), true).await;
        let reply: Reply = decode(&transport.recv().await.unwrap()).unwrap();
        assert!(
            matches!(&reply, Reply::Error { kind, .. } if kind == "corrupt"),
            "{reply:?}"
        );
        // The offer is closed: its key writes no more.
        let late = transport
            .write(offer, bytes::Bytes::from(vec![0u8; offer.len as usize]))
            .await;
        assert!(late.is_err(), "a sealed offer took a write: {late:?}");

        // Saying more was written than the offer holds ends the connection.
        let (transport, offer) = take_a_write_offer(connect, "too-long").await;
        transport
            .send(encode(&Request::Wrote {
                len: offer.len + 1,
                crc32c: 0,
                last: true,
            }))
            .await
            .unwrap();
        assert!(last_word(&*transport).await.is_none());

        // An offer nobody answers: the lease runs out, the buffer returns,
        // the client is told, nothing is stored.
        let (held, _) = take_a_write_offer(connect, "idle").await;
        assert_eq!(node.pool.stats().in_use, 1);
        wait_for_free_buffers(&node).await;
        let said = last_word(&*held).await.unwrap_or_default();
        assert!(said.contains("lease expired"), "{said}");

        // A client gone after writing half an object leaves nothing.
        let (transport, offer) = take_a_write_offer(connect, "half").await;
        write_and_say(&*transport, offer, b"half", crc32c::crc32c(b"half"), false).await;
        assert!(matches!(
            decode::<Reply>(&transport.recv().await.unwrap()).unwrap(),
            Reply::Offer { .. }
        ));
        drop(transport);
        wait_for_free_buffers(&node).await;
        let store = remote(connect.clone());
        for name in ["bad-crc", "too-long", "idle", "half"] {
            assert!(
                matches!(store.info("c", name).await, Err(BlobError::NotFound(_))),
                "{name} was stored"
            );
        }
    }
    assert_eq!(
        node.pool.stats().in_use,
        0,
        "every offered buffer went back"
    );
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

/// Asks for `big` over a raw connection and takes its first chunk without
/// ever saying `next`: the read buffer is leased to this client.
async fn hold_a_read_buffer(connect: &Connector) -> Arc<dyn hearth_blob::transport::Transport> {
    let transport = connect().await.unwrap();
    say_hello(&*transport, None).await;
    transport
        .send(encode(&Request::Get {
            container: "c".into(),
            name: "big".into(),
            start: 0,
            end: u64::MAX,
        }))
        .await
        .unwrap();
    for expected in ["reading", "chunk"] {
        let reply: Reply = decode(&transport.recv().await.unwrap()).unwrap();
        let kind = match reply {
            Reply::Reading { .. } => "reading",
            Reply::Chunk { .. } => "chunk",
            other => panic!("expected {expected}, got {other:?}"),
        };
        assert_eq!(kind, expected);
    }
    transport
}

async fn wait_for_free_buffers(node: &Node) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.pool.stats().in_use > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a lease never ran out: {:?}",
            node.pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_a_read_buffer_is_cut_off_when_its_lease_runs_out() {
    let options = ServeOptions {
        lease_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let node = node();
    let (over_tcp, over_loopback, _server) = tcp_and_loopback(&node, options.clone()).await;
    let store = remote(over_tcp.clone());
    store.create_container("c").await.unwrap();
    store
        .put_bytes("c", "big", conformance::pattern(2 << 20, 3))
        .await
        .unwrap();
    for connect in [&over_tcp, &over_loopback] {
        let held = hold_a_read_buffer(connect).await;
        assert_eq!(node.pool.stats().in_use, 1);
        wait_for_free_buffers(&node).await;
        // The node ended the connection, saying why: the idle client learns it.
        let said = last_word(&*held).await.unwrap_or_default();
        assert!(said.contains("lease expired"), "{said}");
        // A client that keeps saying `next` reads the whole object.
        assert_eq!(
            remote(connect.clone())
                .get_bytes("c", "big", ByteRange::ALL)
                .await
                .unwrap(),
            conformance::pattern(2 << 20, 3)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_the_rest_still_served() {
    let node = node();
    let (addr, _server) = tcp_node_with(
        &node,
        ServeOptions {
            max_connections: 2,
            ..ServeOptions::default()
        },
    )
    .await;
    let connect = tcp_connector(addr, Duration::from_secs(2));
    let first = connect().await.unwrap();
    let second = connect().await.unwrap();
    // Both are served.
    for held in [&first, &second] {
        say_hello(&**held, None).await;
        held.send(encode(&Request::ContainerInfo {
            container: "none".into(),
        }))
        .await
        .unwrap();
        let reply: Reply = decode(&held.recv().await.unwrap()).unwrap();
        assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
    }
    // A third is closed on accept: its call fails by name.
    let third = remote(connect.clone());
    match third.container_info("none").await {
        Err(BlobError::Unavailable(message)) => {
            assert!(message.starts_with("storage node: "), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // One goes away; there is room again.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match remote(connect.clone()).create_container("c").await {
            Ok(_) => break,
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "{error:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_hosts_file_serves_only_its_hosts_each_in_its_scope() {
    use hearth_store_node::access::{Access, HostTable, token_digest};
    let (red, blue) = ("token-of-red-0123456789", "token-of-blue-0123456789");
    let hosts = HostTable::parse(&format!(
        "[hosts.red]\ntoken_sha256 = \"{}\"\nscope = \"red\"\n\
         [hosts.blue]\ntoken_sha256 = \"{}\"\nscope = \"blue\"\n",
        token_digest(red),
        token_digest(blue)
    ))
    .unwrap();
    let options = ServeOptions {
        access: Arc::new(Access::Hosts(hosts)),
        hello_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let node = node();
    let (over_tcp, over_loopback, _server) = tcp_and_loopback(&node, options.clone()).await;
    // The whole contract holds inside a scope.
    conformance::run(&remote_store(over_loopback.clone(), Some(red))).await;
    for (n, connect) in [&over_tcp, &over_loopback].into_iter().enumerate() {
        for token in [None, Some("token-of-nobody-0123456789")] {
            match remote_store(connect.clone(), token)
                .container_info("c")
                .await
            {
                Err(BlobError::Unavailable(message)) => {
                    assert!(message.contains("not authorized"), "{message}")
                }
                other => panic!("{token:?}: expected Unavailable, got {other:?}"),
            }
        }
        // Red's container is not blue's, though both call it `shared`.
        let container = format!("shared-{n}");
        let (as_red, as_blue) = (
            remote_store(connect.clone(), Some(red)),
            remote_store(connect.clone(), Some(blue)),
        );
        as_red.create_container(&container).await.unwrap();
        as_red
            .put_bytes(&container, "x", conformance::pattern(100, 7))
            .await
            .unwrap();
        assert!(matches!(
            as_blue.info(&container, "x").await,
            Err(BlobError::NotFound(_))
        ));
        as_blue.create_container(&container).await.unwrap();
        assert!(matches!(
            as_blue.info(&container, "x").await,
            Err(BlobError::NotFound(_))
        ));
        assert_eq!(
            as_red
                .get_bytes(&container, "x", ByteRange::ALL)
                .await
                .unwrap(),
            conformance::pattern(100, 7)
        );
        // A client that sends anything but hello first, or nothing, is
        // closed.
        let rude = connect().await.unwrap();
        rude.send(encode(&Request::ContainerInfo {
            container: container.clone(),
        }))
        .await
        .unwrap();
        let silent = connect().await.unwrap();
        for closed in [rude, silent] {
            let ended = tokio::time::timeout(Duration::from_secs(10), closed.recv())
                .await
                .expect("the node closes it");
            assert!(ended.is_err(), "{ended:?}");
        }
    }
    let metrics = options.metrics.render(0);
    for (series, expected) in [
        (
            "reason=\"unauthorized\"} 4",
            "two refused tokens per transport",
        ),
        (
            "reason=\"no_hello\"} 4",
            "a rude and a silent client per transport",
        ),
    ] {
        assert!(metrics.contains(series), "{expected}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holding_silent_connections_cannot_take_every_slot() {
    let options = ServeOptions {
        max_pending_hellos_per_peer: 2,
        hello_timeout: Duration::from_secs(2),
        ..ServeOptions::default()
    };
    let node = node();
    let (addr, _server) = tcp_node_with(&node, options.clone()).await;
    let connect = tcp_connector(addr, Duration::from_secs(2));
    // Two connections that said hello are not pending: they do not count.
    let mut greeted = Vec::new();
    for _ in 0..2 {
        let transport = connect().await.unwrap();
        say_hello(&*transport, None).await;
        greeted.push(transport);
    }
    // Two silent ones fill this address's pending places; a third
    // connection is closed at once, by name when its socket takes it.
    let silent: Vec<_> = futures_util::future::join_all((0..2).map(|_| connect()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // (The node accepts in order: the silent ones are in before this.)
    match remote(connect.clone()).container_info("c").await {
        Err(BlobError::Unavailable(message)) => {
            assert!(message.starts_with("storage node: "), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        options
            .metrics
            .render(0)
            .contains("reason=\"pending_hellos_per_peer\"} 1"),
        "{}",
        options.metrics.render(0)
    );
    // The greeted connections are served throughout.
    for held in &greeted {
        held.send(encode(&Request::ContainerInfo {
            container: "none".into(),
        }))
        .await
        .unwrap();
        let reply: Reply = decode(&held.recv().await.unwrap()).unwrap();
        assert!(matches!(reply, Reply::Error { .. }), "{reply:?}");
    }
    // Once the silent ones time out, the address may connect again.
    for closed in silent {
        let ended = tokio::time::timeout(Duration::from_secs(10), closed.recv())
            .await
            .expect("the node closes a silent connection");
        assert!(ended.is_err(), "{ended:?}");
    }
    remote(connect).create_container("c").await.unwrap();
}
