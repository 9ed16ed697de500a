//! The `hearth-store` binary: a storage node serving an `fs` directory and
//! an S3 bucket over TCP, reached by the `remote` backend; bad arguments
//! end it with a named error.

use hearth_blob::conformance::{self, LIMIT};
use hearth_blob::remote::{RemoteBackend, tcp_connector};
use hearth_blob::{BlobLimits, BlobStore};
use hearth_testkit::process::{Running, run_to_end};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const HEARTH_STORE: &str = env!("CARGO_BIN_EXE_hearth-store");

/// Starts `hearth-store` with `args` on a free port; returns it and where
/// it listens.
fn start(args: &[&str]) -> (Running, SocketAddr) {
    start_command(Command::new(HEARTH_STORE), args)
}

/// [`start`] with `command` standing for the binary (e.g. under `prlimit`).
fn start_command(mut command: Command, args: &[&str]) -> (Running, SocketAddr) {
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
    let line = node.wait_for_line("hearth-store listening on ");
    let addr = line
        .rsplit("listening on ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    (node, addr)
}

fn remote(addr: SocketAddr) -> BlobStore {
    BlobStore::new(
        "remote",
        Arc::new(RemoteBackend::new(tcp_connector(
            addr,
            Duration::from_secs(5),
        ))),
        BlobLimits {
            max_object_bytes: LIMIT,
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_serves_an_fs_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = start(&["--fs", dir.path().to_str().unwrap()]);
    conformance::run(&remote(addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_store_serves_an_s3_bucket() {
    let server = hearth_testkit::services::S3Server::start();
    server.create_bucket("node-bucket");
    let (_node, addr) = start(&[
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
    for (args, says) in [
        (
            vec!["--listen", "127.0.0.1:0"],
            "give --fs DIR or --s3-endpoint",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--fs", "/proc/version/not-a-dir"],
            "--fs /proc/version/not-a-dir",
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
    let (node, addr) = start_command(command, &["--fs", dir.path().to_str().unwrap()]);
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
