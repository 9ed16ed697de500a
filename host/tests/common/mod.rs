//! Helpers shared by the in-process host tests.

/// Runs the async `scenario(Kind)` once per listed backend kind, each as its
/// own test: `per_kind!(scenario: Embedded => embedded, Redis => redis)`
/// makes `scenario::embedded` and `scenario::redis`.
#[allow(unused_macros)]
macro_rules! per_kind {
    ($scenario:ident: $($kind:ident => $test:ident),+ $(,)?) => {
        mod $scenario {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$scenario(super::Kind::$kind).await;
                }
            )+
        }
    };
}

use hearth_host::{FunctionEnv, Host};
use std::net::SocketAddr;
use std::sync::Arc;

/// Starts the `hearthd` under test with `toml` as its config (written into
/// `dir`, with its socket and cache there too) and an admin endpoint on a
/// free port; returns once it logs "hearthd ready".
// Each test crate compiles this module; not every one starts hearthd.
#[allow(dead_code)]
pub fn start_hearthd(dir: &std::path::Path, toml: &str) -> hearth_testkit::process::Running {
    start_hearthd_with(dir, toml, &[])
}

/// [`start_hearthd`] with `env` set in its environment.
#[allow(dead_code)]
pub fn start_hearthd_with(
    dir: &std::path::Path,
    toml: &str,
    env: &[(&str, &str)],
) -> hearth_testkit::process::Running {
    let config = dir.join("hearth.toml");
    std::fs::write(&config, toml).unwrap();
    let hearthd = hearth_testkit::process::Running::start(
        std::process::Command::new(env!("CARGO_BIN_EXE_hearthd"))
            .envs(env.iter().copied())
            .env("HEARTH_SOCKET", dir.join("hearthd.sock"))
            .env("HEARTH_CACHE_DIR", dir.join("cache"))
            .arg("--config")
            .arg(&config)
            .args(["--admin", "127.0.0.1:0"]),
    );
    hearthd.wait_for_line("hearthd ready");
    hearthd
}

/// Loads `path` into `host` as `env` describes and serves it on a free
/// loopback port until the test ends.
#[allow(dead_code)]
pub async fn serve_on(host: &Arc<Host>, path: &str, env: FunctionEnv) -> SocketAddr {
    let function = host
        .load(env, hearth_testkit::wasm_bytes(path))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hearth_host::http::serve(
        function,
        listener,
        std::future::pending(),
    ));
    addr
}
