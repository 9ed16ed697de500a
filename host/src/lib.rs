//! Hearth's host: the wasmtime engine, the HTTP trigger, jobs and limits,
//! shared by `hearthd` (the node daemon) and `hearth` (the CLI).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use hearth_host::{EngineSettings, FunctionEnv, Host, Limits};
//!
//! let limits = Limits::default();
//! let host = Host::new(&EngineSettings::for_limits([&limits]))?;
//! let function = host.load_file(FunctionEnv::new("hello"), "hello.wasm".as_ref()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! hearth_host::http::serve(function, listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! Module map: [`capabilities`] (state, invoke, config and messaging host functions), [`messages`] (the message trigger: subscriptions), [`engine`] (engine and epoch clock), [`function`] (loading and
//! instances), [`http`] (the HTTP trigger), [`job`] (the job world),
//! [`limits`], [`invocation_error`] (what callers see when things fail),
//! [`config`] (`hearth.toml`), [`control`] (the control API hearthd serves to shims), [`distribution`] (files, references and the caches), [`guest_output`] (guest stdout/stderr to logs).

pub mod admin;
pub mod capabilities;
pub mod config;
pub mod control;
pub mod distribution;
pub mod engine;
pub mod function;
pub mod guest_output;
pub mod http;
pub mod invocation_error;
pub mod job;
pub mod limits;
pub mod logging;
pub mod messages;
pub mod state;

pub use distribution::{CacheSettings, FunctionSource, PullPolicy};
pub use engine::{Allocation, EngineSettings, HostEngine};
pub use function::{Function, FunctionKind, FunctionLoadError, Host};
pub use invocation_error::InvocationError;
pub use limits::Limits;
pub use state::{FunctionEnv, FunctionState};

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
