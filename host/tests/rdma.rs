//! A function's blobs over RDMA verbs, end to end (feature `rdma`): a real
//! `hearth-store` serving over verbs on `HEARTH_RDMA_DEVICE` (soft-RoCE
//! `rxe0` in tests/rdma-vm) and a real hearthd whose `remote` store has
//! `transport = "rdma"`, the `blob-roundtrip` function between them.
//!
//! * 4 KiB, 1 MiB and 64 MiB objects written (one-sided WRITEs into the
//!   node's offered buffers) and read back whole, into guest memory with
//!   a digest, and by ranges;
//! * the node killed mid-read: the guest gets `unavailable`, hearthd
//!   serves on, and a node started again is used again;
//! * hearthd killed mid-read: the node's buffers all go back.
//!
//! Both binaries come from this test's target dir, built with `--features
//! rdma` by the same `cargo test` (scripts/test.sh runs it in the VM).
//! Without a device the tests print that they did not run (and fail in CI).
#![cfg(feature = "rdma")]

use bytes::Bytes;
use hearth_testkit::http::{get, send};
use hearth_testkit::metric;
use hearth_testkit::process::Running;
use hearth_testkit::services::free_port;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// `len` bytes that differ at every offset of a 251-byte cycle.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
}

/// The function's `/digest` answer for `data`.
fn digest_line(data: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("size {} fnv1a64 {hash:016x}\n", data.len())
}

/// A `hearth-store` serving `data` over verbs on `device`, its QP setup on
/// `rdma_listen` (a free port if `None`).
struct Node {
    process: Running,
    rdma_addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl Node {
    fn start(data: &Path, device: &str, rdma_listen: Option<SocketAddr>) -> Node {
        let rdma_listen =
            rdma_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let process = Running::start(
            std::process::Command::new(hearth_testkit::containerd::workspace_binary(
                "hearth-store",
            ))
            .args(["--listen", "127.0.0.1:0", "--no-auth", "--metrics-listen"])
            .arg("127.0.0.1:0")
            .arg("--fs")
            .arg(data)
            .args(["--rdma-device", device, "--rdma-listen"])
            .arg(rdma_listen.to_string())
            // Reads and writes of 64 MiB go through 256 KiB buffers.
            .args(["--buffer-kib", "256", "--hot-mib", "0"]),
        );
        let rdma_addr = process.addr_after("serving RDMA, setup on ");
        let metrics_addr = process.addr_after("metrics on http://");
        process.wait_for_line("hearth-store listening on");
        Node {
            process,
            rdma_addr,
            metrics_addr,
        }
    }

    /// `hearth_store_read_buffers_in_use`, as the node's /metrics says.
    async fn buffers_in_use(&self) -> f64 {
        let text = get(self.metrics_addr, "/metrics").await.unwrap().text();
        metric(&text, "hearth_store_read_buffers_in_use").expect("the buffers gauge")
    }

    /// Waits until the node has `predicate` buffers in use.
    async fn wait_for_buffers(&self, what: &str, predicate: impl Fn(f64) -> bool) {
        let started = Instant::now();
        loop {
            let in_use = self.buffers_in_use().await;
            if predicate(in_use) {
                return;
            }
            assert!(
                started.elapsed() < hearth_testkit::process::patience(),
                "{what}: {in_use} buffers in use; node log:\n{}",
                self.process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// hearthd serving `blob-roundtrip` on a free port, its blobs in a
/// `remote` store over verbs to `node`.
fn start_hearthd(dir: &Path, device: &str, node: SocketAddr) -> (Running, SocketAddr) {
    let function = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let toml = format!(
        r#"
[limits]
max_request_body_bytes = 134217728
request_timeout_ms = 600000
[blob]
default_store = "node"
[blob.stores.node]
type = "remote"
address = "{node}"
transport = "rdma"
rdma_device = "{device}"
timeout_ms = 10000

[[function]]
name = "blob-roundtrip"
path = "{wasm}"
listen = "{function}"
"#,
        wasm = hearth_testkit::BLOB_ROUNDTRIP,
    );
    std::fs::write(dir.join("hearth.toml"), toml).unwrap();
    let hearthd = Running::start(
        std::process::Command::new(env!("CARGO_BIN_EXE_hearthd"))
            .env("HEARTH_SOCKET", dir.join("hearthd.sock"))
            .env("HEARTH_CACHE_DIR", dir.join("cache"))
            .arg("--config")
            .arg(dir.join("hearth.toml")),
    );
    hearthd.wait_for_line("hearthd ready");
    (hearthd, function)
}

/// The device, or `None` after saying why the tests do not run.
fn device() -> Option<String> {
    let device = hearth_blob::rdma::device_for_tests();
    if device.is_some() {
        // hearth-store comes from this target dir, as cargo built it for
        // this test (with `rdma`), never rebuilt without it.
        hearth_testkit::containerd::use_prebuilt_binaries(hearth_testkit::containerd::target_dir());
    }
    device
}

async fn put(addr: SocketAddr, path: &str, body: Bytes) -> hearth_testkit::http::Reply {
    send(addr, Method::PUT, path, &[], body).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_writes_and_reads_objects_over_verbs_whole_by_digest_and_by_range() {
    let Some(device) = device() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let node = Node::start(&dir.path().join("data"), &device, None);
    let (hearthd, function) = start_hearthd(dir.path(), &device, node.rdma_addr);

    for (len, name) in [(4 << 10, "4k"), (1 << 20, "1m"), (64 << 20, "64m")] {
        let started = Instant::now();
        let data = pattern(len);
        let stored = put(function, &format!("/objects/{name}"), data.clone()).await;
        assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
        assert_eq!(stored.text(), format!("stored {len} bytes\n"));

        // Into guest memory, every byte checked there.
        let digest = get(function, &format!("/digest/{name}")).await.unwrap();
        assert_eq!(digest.text(), digest_line(&data), "{name}");

        // Whole, streamed to the client.
        let whole = get(function, &format!("/objects/{name}")).await.unwrap();
        assert_eq!(whole.status, StatusCode::OK);
        assert!(whole.body == data, "{name}: the bytes read back differ");

        // Ranges: the first byte, one across a 256 KiB buffer boundary
        // (where the object has one), the last bytes.
        let ranges = [
            (0, 0),
            (len / 2 - 100, (len / 2 + 300_000).min(len - 1)),
            (len - 10, len - 1),
        ];
        for (start, end) in ranges {
            let part = send(
                function,
                Method::GET,
                &format!("/objects/{name}"),
                &[("range", &format!("bytes={start}-{end}"))],
                Bytes::new(),
            )
            .await
            .unwrap();
            assert_eq!(
                part.status,
                StatusCode::PARTIAL_CONTENT,
                "{name} {start}-{end}"
            );
            assert!(
                part.body == data.slice(start..=end),
                "{name}: bytes {start}-{end} differ"
            );
        }
        println!(
            "{name}: written, read by digest, whole and by three ranges in {:.1?}",
            started.elapsed()
        );
    }
    node.wait_for_buffers("after the reads", |n| n == 0.0).await;
    assert!(
        !hearthd.log_text().contains("RDMA connection failed"),
        "{}",
        hearthd.log_text()
    );
}

/// Stores a 64 MiB object through the function and starts reading it into
/// guest memory in the background; returns once the node has a read
/// buffer out (the read is under way).
async fn start_a_long_read(
    function: SocketAddr,
    node: &Node,
) -> tokio::task::JoinHandle<std::io::Result<hearth_testkit::http::Reply>> {
    let stored = put(function, "/objects/big", pattern(64 << 20)).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let reading = tokio::spawn(async move { get(function, "/digest/big").await });
    node.wait_for_buffers("a read under way", |n| n >= 1.0)
        .await;
    reading
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_killed_mid_read_is_unavailable_to_the_guest_and_hearthd_serves_on() {
    let Some(device) = device() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let mut node = Node::start(&dir.path().join("data"), &device, None);
    let (hearthd, function) = start_hearthd(dir.path(), &device, node.rdma_addr);
    let reading = start_a_long_read(function, &node).await;

    node.process.kill();
    let failed = reading.await.unwrap().unwrap();
    assert_eq!(
        failed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        failed.text()
    );
    assert!(failed.text().contains("unavailable"), "{}", failed.text());
    // hearthd logs the failure and serves on: with the node down, a call
    // is a named error too.
    hearthd.wait_for_line("blob read failed mid-stream");
    let down = get(function, "/info/big").await.unwrap();
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.text()
    );

    // The node back on the same address: used again.
    let node = Node::start(&dir.path().join("data"), &device, Some(node.rdma_addr));
    let digest = get(function, "/digest/big").await.unwrap();
    assert_eq!(digest.text(), digest_line(&pattern(64 << 20)));
    node.wait_for_buffers("after the read", |n| n == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearthd_killed_mid_read_returns_every_buffer_of_the_node() {
    let Some(device) = device() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let node = Node::start(&dir.path().join("data"), &device, None);
    let hearthd_dir = dir.path().join("first");
    std::fs::create_dir(&hearthd_dir).unwrap();
    let (mut hearthd, function) = start_hearthd(&hearthd_dir, &device, node.rdma_addr);
    let reading = start_a_long_read(function, &node).await;

    hearthd.kill();
    assert!(reading.await.unwrap().is_err(), "the client saw the cut");
    node.wait_for_buffers("after hearthd died", |n| n == 0.0)
        .await;

    // Another hearthd reads the object whole.
    let again_dir = dir.path().join("again");
    std::fs::create_dir(&again_dir).unwrap();
    let (_hearthd, function) = start_hearthd(&again_dir, &device, node.rdma_addr);
    let digest = get(function, "/digest/big").await.unwrap();
    assert_eq!(digest.text(), digest_line(&pattern(64 << 20)));
    node.wait_for_buffers("after the read", |n| n == 0.0).await;
}
