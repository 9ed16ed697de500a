//! The `hearth-store` binary: a storage node serving an `fs` directory and
//! an S3 bucket over TCP, reached by the `remote` backend, to the hosts of
//! its hosts file, each in its scope; bad arguments end it with a named
//! error.

mod common;

use common::{last_word, remote_store, say_hello};
use hearth_blob::BlobStore;
use hearth_blob::conformance;
use hearth_blob::remote::tcp_connector;
use hearth_testkit::process::{Running, run_to_end};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const HEARTH_STORE: &str = env!("CARGO_BIN_EXE_hearth-store");

/// The token of the host the conformance runs use.
const TOKEN: &str = "conformance-host-token-0123456789";

/// A hosts file in `dir` listing `(name, token, scope)`; its path.
fn hosts_file(dir: &std::path::Path, hosts: &[(&str, &str, Option<&str>)]) -> String {
    let mut text = String::new();
    for (name, token, scope) in hosts {
        text.push_str(&format!(
            "[hosts.{name}]\ntoken_sha256 = \"{}\"\n",
            hearth_store_node::access::token_digest(token)
        ));
        if let Some(scope) = scope {
            text.push_str(&format!("scope = \"{scope}\"\n"));
        }
    }
    let path = dir.join("hosts.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Starts `hearth-store` with `args` on a free port, serving the host
/// with [`TOKEN`] in scope `conformance`; returns it and where it listens.
fn start(args: &[&str]) -> (Running, SocketAddr, tempfile::TempDir) {
    start_command(Command::new(HEARTH_STORE), args)
}

/// [`start`] with `command` standing for the binary (e.g. under `prlimit`).
fn start_command(command: Command, args: &[&str]) -> (Running, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &[("conformance", TOKEN, Some("conformance"))]);
    let mut all = vec!["--hosts", &hosts];
    all.extend_from_slice(args);
    let (node, addr) = start_with(command, &all);
    (node, addr, dir)
}

/// Starts `command` (`hearth-store`) with exactly `args` besides where it
/// listens and its sizes.
fn start_with(mut command: Command, args: &[&str]) -> (Running, SocketAddr) {
    let node = Running::start(
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--max-object-mib",
                "8",
                "--buffer-kib",
                "256",
            ])
            .args(args),
    );
    let addr = node.addr_after("hearth-store listening on ");
    (node, addr)
}

/// The store `addr` serves to the host presenting [`TOKEN`].
fn remote(addr: SocketAddr) -> BlobStore {
    remote_as(addr, Some(TOKEN))
}

/// The store `addr` serves to a host presenting `token`.
fn remote_as(addr: SocketAddr, token: Option<&str>) -> BlobStore {
    remote_store(tcp_connector(addr, Duration::from_secs(5)), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_serves_an_fs_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, _hosts) = start(&["--fs", dir.path().to_str().unwrap()]);
    conformance::run(&remote(addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_serves_an_s3_bucket() {
    let server = hearth_testkit::services::S3Server::start();
    server.create_bucket("node-bucket");
    let (_node, addr, _hosts) = start(&[
        "--s3-endpoint",
        &server.endpoint(),
        "--s3-bucket",
        "node-bucket",
        "--s3-access-key",
        hearth_testkit::services::S3Server::CREDENTIALS.0,
        "--s3-secret-key",
        hearth_testkit::services::S3Server::CREDENTIALS.1,
    ]);
    conformance::run(&remote(addr)).await;
}

#[test]
fn bad_arguments_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().to_str().unwrap().to_string();
    let bad_hosts = dir.path().join("bad-hosts.toml");
    std::fs::write(&bad_hosts, "[hosts.a]\ntoken_sha256 = \"not-hex\"\n").unwrap();
    let bad_hosts = bad_hosts.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--listen", "127.0.0.1:0", "--no-auth"],
            "give --fs DIR or --s3-endpoint",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
                "--fs",
                "/proc/version/not-a-dir",
            ],
            "--fs /proc/version/not-a-dir",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--fs", &fs],
            "give --hosts FILE (the hosts it serves, by token) or --no-auth",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--fs", &fs, "--hosts", bad_hosts],
            "hosts.a.token_sha256: not 64 hex digits",
        ),
    ] {
        let (status, log) = run_to_end(Command::new(HEARTH_STORE).args(&args));
        assert_eq!(status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(says), "{args:?} should say {says:?}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_out_of_file_descriptors_keeps_running_and_recovers() {
    assert!(
        std::path::Path::new("/usr/bin/prlimit").exists(),
        "/usr/bin/prlimit is missing: install Debian's util-linux package"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("/usr/bin/prlimit");
    command.args(["--nofile=48:48", "--", HEARTH_STORE]);
    // All 64 come from one address: let them all be accepted (as they would
    // be from 64 peers) so the descriptors run out.
    let (node, addr, _hosts) = start_command(
        command,
        &[
            "--fs",
            dir.path().to_str().unwrap(),
            "--max-pending-hellos-per-peer",
            "1000",
        ],
    );
    // Hold more connections than the node has descriptors for.
    let held: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    node.wait_for_line("storage node accept failed; retrying");
    drop(held);
    // Once they are gone, the node serves again.
    let store = remote(addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.create_container("after").await {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{error:?}\n{}",
                    node.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    store
        .put_bytes("after", "x", conformance::pattern(1000, 4))
        .await
        .unwrap();
}

#[test]
fn hash_token_prints_the_line_a_hosts_file_needs() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let output = Command::new(HEARTH_STORE)
        .arg("--hash-token")
        .arg(&token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        hearth_store_node::access::token_digest(TOKEN)
    );
    std::fs::write(&token, "short\n").unwrap();
    let (status, log) = run_to_end(Command::new(HEARTH_STORE).arg("--hash-token").arg(&token));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("a token has at least 16 characters"), "{log}");
}

/// The node's `/metrics` text, from the address its log names.
async fn node_metrics(node: &Running) -> String {
    let addr = node.addr_after("hearth-store metrics on http://");
    hearth_testkit::http::get(addr, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"))
        .text()
}

/// The value of the series `name` (labels included) in `metrics`.
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_serves_only_listed_hosts_each_in_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (a, b, c) = (
        "token-of-host-a-0123456789",
        "token-of-host-b-0123456789",
        "token-of-host-c-0123456789",
    );
    let hosts = hosts_file(
        dir.path(),
        &[
            ("host-a", a, Some("prod")),
            ("host-b", b, Some("prod")),
            ("host-c", c, Some("staging")),
        ],
    );
    let (node, addr) = start_with(
        Command::new(HEARTH_STORE),
        &[
            "--hosts",
            &hosts,
            "--fs",
            data.to_str().unwrap(),
            "--hello-timeout-ms",
            "500",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );

    // No token, or one the node does not list: refused, named, logged.
    for token in [None, Some("token-of-nobody-0123456789")] {
        let error = remote_as(addr, token)
            .create_container("team-a.shop.photos")
            .await
            .unwrap_err();
        assert!(
            matches!(&error, hearth_blob::BlobError::Unavailable(m) if m.contains("not authorized")),
            "{token:?}: {error:?}"
        );
    }
    node.wait_for_line("host not authorized");

    // Host A writes; host B, in the same scope, reads it; host C, in
    // another scope, cannot even see the container, and its own container
    // of that name is a different one.
    let (host_a, host_b, host_c) = (
        remote_as(addr, Some(a)),
        remote_as(addr, Some(b)),
        remote_as(addr, Some(c)),
    );
    host_a.create_container("team-a.shop.photos").await.unwrap();
    host_a
        .put_bytes("team-a.shop.photos", "cat", conformance::pattern(5000, 1))
        .await
        .unwrap();
    assert_eq!(
        host_b
            .get_bytes("team-a.shop.photos", "cat", hearth_blob::ByteRange::ALL)
            .await
            .unwrap(),
        conformance::pattern(5000, 1)
    );
    let info = host_b.info("team-a.shop.photos", "cat").await.unwrap();
    assert_eq!(
        info.container, "team-a.shop.photos",
        "the scope never shows"
    );
    let unseen = host_c
        .get_bytes("team-a.shop.photos", "cat", hearth_blob::ByteRange::ALL)
        .await
        .unwrap_err();
    assert!(
        matches!(&unseen, hearth_blob::BlobError::NotFound(m) if !m.contains("prod")),
        "{unseen:?}"
    );
    host_c.create_container("team-a.shop.photos").await.unwrap();
    assert!(
        host_c
            .list("team-a.shop.photos", None, 10)
            .await
            .unwrap()
            .names
            .is_empty()
    );
    // The backend holds each scope's container apart.
    for scoped in ["prod!team-a.shop.photos", "staging!team-a.shop.photos"] {
        assert!(data.join(scoped).is_dir(), "{scoped} in {}", data.display());
    }

    // A connection that never says hello is closed after the timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte),
    )
    .await
    .expect("the node closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    node.wait_for_line("no `hello` within 500 ms");

    // Each refusal is counted; the node served on throughout.
    let metrics = node_metrics(&node).await;
    assert_eq!(
        series(
            &metrics,
            "hearth_store_connections_refused_total{reason=\"unauthorized\"}"
        ),
        2,
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "hearth_store_connections_refused_total{reason=\"no_hello\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        host_a.info("team-a.shop.photos", "cat").await.unwrap().size,
        5000
    );
}

/// A raw connection to `addr`, past its hello with [`TOKEN`].
async fn raw_connection(addr: SocketAddr) -> Arc<dyn hearth_blob::transport::Transport> {
    let transport = tcp_connector(addr, Duration::from_secs(5))().await.unwrap();
    say_hello(&*transport, Some(TOKEN)).await;
    transport
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_ends_expired_leases_and_connections_past_its_cap_and_counts_both() {
    use hearth_blob::remote::{Reply, Request, decode, encode};
    let dir = tempfile::tempdir().unwrap();
    let (node, addr, _hosts) = start(&[
        "--fs",
        dir.path().to_str().unwrap(),
        "--lease-timeout-ms",
        "300",
        "--max-connections",
        "3",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    {
        let store = remote(addr);
        store.create_container("c").await.unwrap();
        store
            .put_bytes("c", "big", conformance::pattern(2 << 20, 5))
            .await
            .unwrap();
    }

    // A client takes a read buffer and never says `next`: cut off.
    let holder = raw_connection(addr).await;
    holder
        .send(encode(&Request::Get {
            container: "c".into(),
            name: "big".into(),
            start: 0,
            end: u64::MAX,
        }))
        .await
        .unwrap();
    for _ in 0..2 {
        let reply: Reply = decode(&holder.recv().await.unwrap()).unwrap();
        assert!(
            matches!(reply, Reply::Reading { .. } | Reply::Chunk { .. }),
            "{reply:?}"
        );
    }
    let said = last_word(&*holder).await.unwrap_or_default();
    assert!(said.contains("lease expired"), "{said}");
    node.wait_for_line("without saying `next`");

    // Three connections held: a fourth is closed at once, by name.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node_metrics(&node)
        .await
        .contains("hearth_store_connections_open 0")
    {
        assert!(std::time::Instant::now() < deadline, "connections linger");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw_connection(addr).await);
    }
    match remote(addr).container_info("c").await {
        Err(hearth_blob::BlobError::Unavailable(message)) => {
            assert!(message.starts_with("storage node: "), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    node.wait_for_line("storage node at max_connections");
    let metrics = node_metrics(&node).await;
    assert_eq!(
        series(&metrics, "hearth_store_leases_expired_total"),
        1,
        "{metrics}"
    );
    assert!(
        series(
            &metrics,
            "hearth_store_connections_refused_total{reason=\"max_connections\"}"
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(series(&metrics, "hearth_store_read_buffers_in_use"), 0);

    // Room again once they go; the object is whole.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match remote(addr)
            .get_bytes("c", "big", hearth_blob::ByteRange::ALL)
            .await
        {
            Ok(bytes) => {
                assert_eq!(bytes, conformance::pattern(2 << 20, 5));
                break;
            }
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "{error:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
