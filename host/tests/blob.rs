//! `wasi:blobstore` end to end: the `blob-roundtrip` function (streamed
//! upload, ranged read, list, copy/move, delete) against every blob
//! backend: `fs`, `s3` (a real moto server started here), and `remote`
//! (a storage node serving `fs`) over TCP and over the loopback transport.
//! Then the faults: bad names, the size limit, a partial upload, a corrupt
//! object, the storage node down at start and going down mid-read (the
//! request fails with a named error and the host keeps serving), apps kept
//! apart, a hearthd process reporting a blob store not ready, and hearthd
//! reaching a real `hearth-store` with its hosts' tokens, each in its scope.

#[macro_use]
mod common;

use bytes::Bytes;
use common::serve_on;
use hearth_blob::regions::{BufferPool, RegionTable};
use hearth_blob::{BlobBackend, BlobLimits, BlobStore};
use hearth_host::capabilities::HostCapabilities;
use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
use hearth_testkit::http::{get, send};
use hearth_testkit::services::{S3Server, free_port};
use http::{Method, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The store's object limit in these tests.
const MAX_OBJECT: u64 = 4 << 20;

fn limits() -> Limits {
    Limits {
        request_timeout_ms: 30_000,
        max_memory_mib: 32,
        max_request_body_bytes: 16 << 20,
        max_concurrent_instances: 8,
        ..Limits::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Fs,
    S3,
    RemoteTcp,
    RemoteLoopback,
}

/// A storage node (an fs store and its registered buffers) in this process.
struct Node {
    store: BlobStore,
    regions: Arc<RegionTable>,
    pool: Arc<BufferPool>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let regions = Arc::new(RegionTable::default());
        Node {
            store: BlobStore::new(
                "node",
                Arc::new(hearth_blob::fs::FsBackend::open(dir.path()).unwrap()),
                BlobLimits::default(),
            ),
            pool: BufferPool::new(regions.clone(), 256 * 1024, 16),
            regions,
            _dir: dir,
        }
    }

    async fn serve_tcp(&self) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(hearth_store_node::serve::serve_tcp(
            listener,
            self.store.clone(),
            self.pool.clone(),
            self.regions.clone(),
        ));
        (addr, server)
    }
}

/// What keeps a backend alive (its server, node or temp dir) until dropped.
type KeepAlive = Box<dyn std::any::Any + Send>;

async fn backend(kind: Kind) -> (KeepAlive, Arc<dyn BlobBackend>) {
    match kind {
        Kind::Fs => {
            let dir = tempfile::tempdir().unwrap();
            let backend = hearth_blob::fs::FsBackend::open(dir.path()).unwrap();
            (Box::new(dir), Arc::new(backend))
        }
        Kind::S3 => {
            let server = S3Server::start();
            server.create_bucket("hearth");
            let backend = hearth_blob::s3::S3Backend::connect(&hearth_blob::s3::S3Settings {
                endpoint: server.endpoint(),
                bucket: "hearth".into(),
                region: hearth_testkit::services::S3Server::REGION.into(),
                credentials: (
                    hearth_testkit::services::S3Server::CREDENTIALS.0.into(),
                    hearth_testkit::services::S3Server::CREDENTIALS.1.into(),
                ),
                timeout: Duration::from_secs(5),
            })
            .unwrap();
            (Box::new(server), Arc::new(backend))
        }
        Kind::RemoteTcp => {
            let node = Node::new();
            let (addr, server) = node.serve_tcp().await;
            let backend = hearth_blob::remote::RemoteBackend::new(
                hearth_blob::remote::tcp_connector(addr, Duration::from_secs(2)),
            );
            (Box::new((node, AbortOnDrop(server))), Arc::new(backend))
        }
        Kind::RemoteLoopback => {
            let node = Node::new();
            let backend = hearth_blob::remote::RemoteBackend::new(
                hearth_store_node::serve::loopback_connector(
                    node.store.clone(),
                    node.pool.clone(),
                    node.regions.clone(),
                ),
            );
            (Box::new(node), Arc::new(backend))
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn blob_store(backend: Arc<dyn BlobBackend>) -> BlobStore {
    BlobStore::new(
        "files",
        backend,
        BlobLimits {
            max_object_bytes: MAX_OBJECT,
            ..Default::default()
        },
    )
}

/// A host whose one blob store is `store`, and no state store.
fn host(store: BlobStore) -> Arc<Host> {
    let host = Host::new(&EngineSettings::for_limits([&limits()])).unwrap();
    let capabilities = HostCapabilities::new(BTreeMap::new(), None, Default::default())
        .with_blob_stores(BTreeMap::from([("files".to_string(), store)]), None);
    host.install_capabilities(
        capabilities.with_invoker(hearth_host::http::LocalInvoker::for_host(&host)),
    )
    .unwrap();
    host
}

fn env(name: &str) -> FunctionEnv {
    let mut env = FunctionEnv::new(name);
    env.limits = limits();
    env
}

async fn serve(store: BlobStore, name: &str) -> (Arc<Host>, SocketAddr) {
    let host = host(store);
    let addr = serve_on(&host, hearth_testkit::BLOB_ROUNDTRIP, env(name)).await;
    (host, addr)
}

async fn put(addr: SocketAddr, path: &str, body: Bytes) -> hearth_testkit::http::Reply {
    send(addr, Method::PUT, path, &[], body).await.unwrap()
}

async fn call(addr: SocketAddr, method: Method, path: &str) -> hearth_testkit::http::Reply {
    send(addr, method, path, &[], Bytes::new()).await.unwrap()
}

/// `len` bytes that differ at every offset of a 251-byte cycle.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

per_kind!(roundtrip_upload_ranged_read_list_copy_move_delete:
    Fs => fs, S3 => s3, RemoteTcp => remote_tcp, RemoteLoopback => remote_loopback);
per_kind!(bad_input_gets_named_errors_and_writes_nothing:
    Fs => fs, S3 => s3, RemoteTcp => remote_tcp, RemoteLoopback => remote_loopback);

async fn roundtrip_upload_ranged_read_list_copy_move_delete(kind: Kind) {
    let (_keep, backend) = backend(kind).await;
    let (_host, addr) = serve(blob_store(backend), "blob-roundtrip").await;

    // 3 MiB: many stream chunks and, on s3/remote, many blocks/chunks.
    let big = pattern(3 << 20);
    let stored = put(addr, "/objects/photos/big.bin", big.clone()).await;
    assert_eq!(
        stored.status,
        StatusCode::CREATED,
        "{kind:?}: {}",
        stored.text()
    );
    assert_eq!(stored.text(), format!("stored {} bytes\n", big.len()));
    let small = put(addr, "/objects/a.txt", Bytes::from_static(b"hello blob\n")).await;
    assert_eq!(
        small.status,
        StatusCode::CREATED,
        "{kind:?}: {}",
        small.text()
    );

    let whole = get(addr, "/objects/photos%2Fbig.bin").await.unwrap();
    assert_eq!(whole.status, StatusCode::OK, "{kind:?}");
    assert!(whole.body == big, "{kind:?}: the object reads back whole");

    // Ranges, inclusive, across chunk boundaries and at the end.
    for (header, start, end) in [
        ("bytes=0-0", 0usize, 0usize),
        ("bytes=65530-1048600", 65530, 1048600),
        ("bytes=3145000-", 3145000, (3 << 20) - 1),
        ("bytes=-10", (3 << 20) - 10, (3 << 20) - 1),
    ] {
        let part = send(
            addr,
            Method::GET,
            "/objects/photos/big.bin",
            &[("range", header)],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            part.status,
            StatusCode::PARTIAL_CONTENT,
            "{kind:?} {header}"
        );
        assert!(
            part.body[..] == big[start..=end],
            "{kind:?} {header}: {} bytes",
            part.body.len()
        );
        assert_eq!(
            part.header("content-range").unwrap(),
            format!("bytes {start}-{end}/{}", big.len())
        );
    }
    let beyond = send(
        addr,
        Method::GET,
        "/objects/a.txt",
        &[("range", "bytes=100-200")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);

    assert_eq!(
        get(addr, "/objects").await.unwrap().text(),
        "a.txt\nphotos/big.bin\n"
    );
    assert_eq!(get(addr, "/info/a.txt").await.unwrap().text(), "size 11\n");

    // Overwrite replaces whole; copy and move keep the bytes.
    let again = put(addr, "/objects/a.txt", Bytes::from_static(b"v2")).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(
        call(addr, Method::POST, "/copy?from=a.txt&to=b.txt")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(addr, Method::POST, "/move?from=b.txt&to=c.txt")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(addr, "/objects/c.txt").await.unwrap().text(), "v2");
    assert_eq!(
        get(addr, "/objects/b.txt").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(addr, "/objects").await.unwrap().text(),
        "a.txt\nc.txt\nphotos/big.bin\n"
    );

    for name in ["a.txt", "c.txt", "photos/big.bin", "never-there"] {
        assert_eq!(
            call(addr, Method::DELETE, &format!("/objects/{name}"))
                .await
                .status,
            StatusCode::NO_CONTENT,
            "{kind:?}: delete {name}"
        );
    }
    assert_eq!(get(addr, "/objects").await.unwrap().text(), "");
}

async fn bad_input_gets_named_errors_and_writes_nothing(kind: Kind) {
    let (_keep, backend) = backend(kind).await;
    let (_host, addr) = serve(blob_store(backend), "blob-roundtrip").await;
    assert_eq!(
        put(addr, "/objects/keep", Bytes::from_static(b"old"))
            .await
            .status,
        StatusCode::CREATED
    );

    for name in ["..%2Fescape", "a%00b", "%2Fabsolute", "a%2F..%2Fb", "x%2F"] {
        let refused = put(addr, &format!("/objects/{name}"), Bytes::from_static(b"x")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{kind:?}: {name}");
        assert!(
            refused.text().starts_with("invalid name"),
            "{kind:?}: {name}: {}",
            refused.text()
        );
    }
    let bad_container = put(addr, "/objects/x?container=UPPER", Bytes::new()).await;
    assert_eq!(bad_container.status, StatusCode::BAD_REQUEST);

    // Over the limit: refused by the body stream, the old object stays.
    let too_big = put(addr, "/objects/keep", pattern(MAX_OBJECT as usize + 1)).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE, "{kind:?}");
    assert!(
        too_big.text().starts_with("too large"),
        "{}",
        too_big.text()
    );
    assert_eq!(get(addr, "/objects/keep").await.unwrap().text(), "old");

    // An upload cut off mid-body: the function's write fails, nothing is
    // stored, and the host keeps serving.
    cut_off_upload(addr, "/objects/partial", 1 << 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(addr, "/objects").await.unwrap().text(), "keep\n");
    assert_eq!(
        get(addr, "/objects/missing").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(addr, "/objects?container=nope").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

/// Sends a PUT announcing `announced` bytes, sends half, and hangs up.
async fn cut_off_upload(addr: SocketAddr, path: &str, announced: usize) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {announced}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&pattern(announced / 2)).await.unwrap();
    stream.flush().await.unwrap();
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_see_only_their_own_containers() {
    let (_keep, backend) = backend(Kind::Fs).await;
    let store = blob_store(backend.clone());
    let host = host(store.clone());
    let shop = {
        let mut env = env("shop-uploads");
        env.grants.app = Some("shop".into());
        serve_on(&host, hearth_testkit::BLOB_ROUNDTRIP, env).await
    };
    let other = serve_on(&host, hearth_testkit::BLOB_ROUNDTRIP, env("other")).await;
    assert_eq!(
        put(shop, "/objects/secret", Bytes::from_static(b"s"))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        get(other, "/objects/secret").await.unwrap().status,
        StatusCode::NOT_FOUND,
        "another app's `files` is not this one's"
    );
    // What the store holds: the identity's prefix (namespace `default`,
    // app `shop`) on the container.
    assert_eq!(
        store
            .get_bytes("default.shop.files", "secret", hearth_blob::ByteRange::ALL)
            .await
            .unwrap(),
        b"s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_is_a_named_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = blob_store(Arc::new(
        hearth_blob::fs::FsBackend::open(dir.path()).unwrap(),
    ));
    let (_host, addr) = serve(store, "blob-roundtrip").await;
    assert_eq!(
        put(addr, "/objects/doc", pattern(200_000)).await.status,
        StatusCode::CREATED
    );
    // Flip one byte of the stored data (the first block) on disk.
    let file = hearth_testkit::files_under(dir.path())
        .into_iter()
        .find(|path| path.components().any(|c| c.as_os_str() == "objects"))
        .expect("the object's file");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let read = get(addr, "/objects/doc").await;
    // The status went out before the stream failed: the body ends short
    // (or the connection is cut); the bad bytes are never delivered whole.
    match read {
        Ok(reply) => assert!(reply.body.len() < 200_000 || reply.body != pattern(200_000)),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    let range = send(
        addr,
        Method::GET,
        "/objects/doc",
        &[("range", "bytes=0-99")],
        Bytes::new(),
    )
    .await;
    if let Ok(reply) = range {
        assert_ne!(reply.body, pattern(100), "corrupt data is never handed out");
    }
    // And the host still serves.
    assert_eq!(get(addr, "/objects").await.unwrap().text(), "doc\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_down_at_start_or_mid_read_fails_the_request_not_the_host() {
    // Down at start: nothing listens on the address.
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let store = blob_store(Arc::new(hearth_blob::remote::RemoteBackend::new(
        hearth_blob::remote::tcp_connector(closed, Duration::from_secs(1)),
    )));
    let (_host, addr) = serve(store, "blob-roundtrip").await;
    let down = put(addr, "/objects/x", Bytes::from_static(b"x")).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.text().starts_with("unavailable"), "{}", down.text());

    // Goes down mid-read: a cable between host and node that is cut
    // after 1 MiB of a 3 MiB read has gone through it, and stays cut.
    let node = Node::new();
    let (node_addr, _server) = node.serve_tcp().await;
    let cable = Cable::lay(node_addr).await;
    let store = blob_store(Arc::new(hearth_blob::remote::RemoteBackend::new(
        hearth_blob::remote::tcp_connector(cable.addr, Duration::from_secs(1)),
    )));
    let (_host, addr) = serve(store, "blob-roundtrip").await;
    let big = pattern(3 << 20);
    assert_eq!(
        put(addr, "/objects/big", big.clone()).await.status,
        StatusCode::CREATED
    );
    cable.cut_after(1 << 20);
    match get(addr, "/objects/big").await {
        // The status went out before the node went away: the body is short.
        Ok(reply) => assert!(
            reply.body.len() < big.len(),
            "a read cut off by the node is short, never whole: {} bytes",
            reply.body.len()
        ),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    // The host keeps serving, and names the failure.
    let after = get(addr, "/objects").await.unwrap();
    assert_eq!(after.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(after.text().starts_with("unavailable"), "{}", after.text());
}

/// A TCP relay to a storage node that can be cut: once `cut_after(n)` has
/// been called, the node → host direction carries `n` more bytes, then
/// every connection is dropped and no new one is accepted.
struct Cable {
    addr: SocketAddr,
    budget: Arc<std::sync::atomic::AtomicI64>,
}

impl Cable {
    async fn lay(node: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicI64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Arc::new(AtomicI64::new(i64::MAX));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (budget_in, cut_in) = (budget.clone(), cut);
        tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = cut_in.notified() => break,
                };
                let Ok((host_side, _)) = accepted else { break };
                let Ok(node_side) = tokio::net::TcpStream::connect(node).await else {
                    continue;
                };
                let (budget, cut) = (budget_in.clone(), cut_in.clone());
                relays.spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut host_read, mut host_write) = host_side.into_split();
                    let (mut node_read, mut node_write) = node_side.into_split();
                    let upstream = tokio::io::copy(&mut host_read, &mut node_write);
                    let downstream = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let n = node_read.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            let left = budget.fetch_sub(n as i64, Ordering::SeqCst);
                            if left < n as i64 {
                                host_write
                                    .write_all(&buffer[..left.max(0) as usize])
                                    .await?;
                                cut.notify_one();
                                return Ok(());
                            }
                            host_write.write_all(&buffer[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = downstream => {}
                    }
                });
            }
            relays.abort_all();
        });
        Cable { addr, budget }
    }

    fn cut_after(&self, bytes: i64) {
        self.budget
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearthd_reports_a_blob_store_not_ready_and_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let function_port = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        r#"
[blob]
default_store = "local"
[blob.stores.local]
type = "fs"
[blob.stores.node]
type = "remote"
address = "{closed}"
timeout_ms = 500

[[function]]
name = "blob-roundtrip"
path = "{wasm}"
listen = "{function_port}"
"#,
        wasm = hearth_testkit::BLOB_ROUNDTRIP,
    );
    let hearthd = common::start_hearthd(dir.path(), &toml);
    hearthd.wait_for_line("not ready: blob store `node` (remote)");
    let stored = put(function_port, "/objects/a", Bytes::from_static(b"on fs")).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    assert_eq!(
        get(function_port, "/objects/a").await.unwrap().text(),
        "on fs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reads_an_object_into_its_memory_whole_and_right() {
    let (_keep, backend) = backend(Kind::RemoteTcp).await;
    let (_host, addr) = serve(blob_store(backend), "blob-roundtrip").await;
    let data = pattern(3 << 20);
    assert_eq!(
        put(addr, "/objects/d", data.clone()).await.status,
        StatusCode::CREATED
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data.iter() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    assert_eq!(
        get(addr, "/digest/d").await.unwrap().text(),
        format!("size {} fnv1a64 {hash:016x}\n", data.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearthd_reaches_a_storage_node_with_its_token_and_only_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node-data");
    std::fs::create_dir(&data).unwrap();
    // Three credentials: two hosts of one cluster (scope `prod`) and a
    // staging host; and a token the node does not list.
    let tokens = [
        ("prod-a", "token-prod-a-0123456789abcdef", Some("prod")),
        ("prod-b", "token-prod-b-0123456789abcdef", Some("prod")),
        ("staging", "token-staging-0123456789abcdef", Some("staging")),
        ("stranger", "token-stranger-0123456789abcdef", None),
    ];
    let mut hosts = String::new();
    for (name, token, scope) in &tokens {
        std::fs::write(
            dir.path().join(format!("{name}.token")),
            format!("{token}\n"),
        )
        .unwrap();
        if let Some(scope) = scope {
            hosts.push_str(&format!(
                "[hosts.{name}]\ntoken_sha256 = \"{}\"\nscope = \"{scope}\"\n",
                hearth_store_node::access::token_digest(token)
            ));
        }
    }
    std::fs::write(dir.path().join("hosts.toml"), hosts).unwrap();
    let node = hearth_testkit::process::Running::start(
        std::process::Command::new(hearth_testkit::containerd::workspace_binary("hearth-store"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--hosts")
            .arg(dir.path().join("hosts.toml"))
            .arg("--fs")
            .arg(&data),
    );
    let node_addr = node.addr_after("hearth-store listening on ");

    // One hearthd, one function of app `shop` per credential: the node
    // tells them apart by token alone.
    let mut toml = String::from("[blob]\ndefault_store = \"prod-a\"\n");
    let mut ports = BTreeMap::new();
    for (name, _, _) in &tokens {
        toml.push_str(&format!(
            "[blob.stores.{name}]\ntype = \"remote\"\naddress = \"{node_addr}\"\ntoken_file = \"{name}.token\"\ntimeout_ms = 2000\n"
        ));
    }
    for (name, _, _) in &tokens {
        let port = SocketAddr::from(([127, 0, 0, 1], free_port()));
        ports.insert(*name, port);
        toml.push_str(&format!(
            "[[function]]\nname = \"shop-{name}\"\napp = \"shop\"\npath = \"{wasm}\"\nlisten = \"{port}\"\nblob_store = \"{name}\"\n",
            wasm = hearth_testkit::BLOB_ROUNDTRIP,
        ));
    }
    let hearthd = common::start_hearthd(dir.path(), &toml);
    let stored = put(ports["prod-a"], "/objects/cat", Bytes::from_static(b"meow")).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    // The other prod host reads it: same scope, same app.
    let read = get(ports["prod-b"], "/objects/cat").await.unwrap();
    assert_eq!((read.status, read.text()), (StatusCode::OK, "meow".into()));
    // The staging host, same app name, another scope: not there.
    let unseen = get(ports["staging"], "/objects/cat").await.unwrap();
    assert_eq!(unseen.status, StatusCode::NOT_FOUND, "{}", unseen.text());
    // A token the node does not know: a named error, never data.
    let refused = get(ports["stranger"], "/objects/cat").await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused.text().contains("not authorized"),
        "{}",
        refused.text()
    );
    node.wait_for_line("host not authorized");
    hearthd.wait_for_line("not ready: blob store `stranger` (remote)");
    // The bytes sit in prod's partition of the node's directory.
    assert!(
        data.join("prod!default.shop.files").is_dir(),
        "{:?}",
        std::fs::read_dir(&data).unwrap().collect::<Vec<_>>()
    );
    // And prod still serves.
    let again = get(ports["prod-b"], "/objects/cat").await.unwrap();
    assert_eq!(again.text(), "meow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearthd_bounds_a_functions_unfinished_blob_writes_and_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let function_port = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        r#"
[cache]
max_blob_spool_bytes = 1048576
[blob.stores.default]
type = "fs"

[[function]]
name = "blob-roundtrip"
path = "{wasm}"
listen = "{function_port}"
"#,
        wasm = hearth_testkit::BLOB_ROUNDTRIP,
    );
    let hearthd = common::start_hearthd(dir.path(), &toml);
    // 3 MiB through `outgoing-value`: past the function's 1 MiB spool.
    let refused = put(function_port, "/objects/big", pattern(3 << 20)).await;
    assert_eq!(
        refused.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        refused.text()
    );
    assert!(
        refused.text().contains("max_blob_spool_bytes"),
        "{}",
        refused.text()
    );
    hearthd.wait_for_line(
        "blob write refused: the function's unfinished writes are at max_blob_spool_bytes",
    );
    // Nothing of it was stored, its bytes were given back, and the
    // function serves on.
    let missing = get(function_port, "/objects/big").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());
    let small = put(function_port, "/objects/small", pattern(100 << 10)).await;
    assert_eq!(small.status, StatusCode::CREATED, "{}", small.text());
    let metrics = get(hearthd.admin_addr(), "/metrics").await.unwrap().text();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(&format!("{name}{{")) && line.contains("blob-roundtrip"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(value("hearth_blob_spool_refused_total"), 1.0, "{metrics}");
    assert_eq!(value("hearth_blob_spool_bytes"), 0.0, "{metrics}");
}
