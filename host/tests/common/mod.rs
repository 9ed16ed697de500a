//! Helpers shared by the in-process host tests.

use hearth_host::{FunctionEnv, Host};
use std::net::SocketAddr;
use std::sync::Arc;

/// Loads `path` into `host` as `env` describes and serves it on a free
/// loopback port until the test ends.
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
