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
    let node = Running::start(
        Command::new(HEARTH_STORE)
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
