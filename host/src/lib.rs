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
//! # Layers
//!
//! Data flows one way, from trigger to backend; each layer uses only the
//! layers below it (`tests/module_layers.rs` checks the `use` lines):
//!
//! | layer | modules |
//! |---|---|
//! | authoring | [`authoring`] (`hearth new`, `build`, `up`: templates, the embedded SDK, toolchains), [`manifests`] (`hearth deploy`'s Kubernetes manifests) |
//! | serving | [`serving`] (a function's listener and subscriptions, drained together), [`control`] (the control API shims call), [`admin`] (`/metrics`, `/healthz`, `/readyz`), [`config`] (`hearth.toml`), [`node_lock`] (one hearthd per node); the `hearthd` and `hearth` binaries |
//! | triggers | [`http`] (HTTP, and `invoke`'s local route), [`messages`] (subscriptions), [`job`] (`wasi:cli/run`) |
//! | function | [`function`] (loading, the pool, the host; [`function::concurrent`]: a WASI 0.3 instance serving many requests at once), [`invocation`] (one invocation, for every trigger), [`engine`] |
//! | store data | [`store_data`] (the `T` of every `Store<T>`), [`function_env`] |
//! | capabilities | [`capabilities`] (keyvalue, state, invoke, config, messaging, blobstore host functions) |
//! | leaves | [`invocation_error`] (what callers see when things fail), [`propagation`] (headers and request context), [`limits`], [`stats`], [`guest_output`], [`distribution`] (files, references and the caches), [`logging`], [`tenancy`] (who a function is, what its namespace may reach), [`telemetry`] (spans, exported over OTLP) |

pub mod admin;
pub mod authoring;
pub mod capabilities;
pub mod config;
pub mod control;
pub mod distribution;
pub mod engine;
pub mod function;
pub mod function_env;
pub mod guest_output;
pub mod http;
pub mod invocation;
pub mod invocation_error;
pub mod job;
pub mod limits;
pub mod logging;
pub mod manifests;
pub mod messages;
pub mod node_lock;
pub mod propagation;
pub mod serving;
pub mod stats;
pub mod store_data;
pub mod telemetry;
pub mod tenancy;

pub use distribution::{CacheSettings, FunctionSource, PullPolicy};
pub use engine::{Allocation, EngineSettings, HostEngine};
pub use function::{Function, FunctionKind, FunctionLoadError, Host};
pub use function_env::FunctionEnv;
pub use invocation::Invocation;
pub use invocation_error::InvocationError;
pub use limits::Limits;
pub use store_data::StoreData;

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
