//! Log setup for the binaries: human-readable lines on stderr, filtered by
//! `HEARTH_LOG` (an `EnvFilter` directive, default `info`; `hearth run`'s
//! default is [`RUN_DEFAULT`]).

/// `hearth run`'s filter when `HEARTH_LOG` is unset: warnings, a guest's
/// `wasi:logging` lines at info and up, and the command's own lines (target
/// `hearth::run`: where a service listens), so that a job's stderr is its
/// own, as under `wasmtime run`.
pub const RUN_DEFAULT: &str = "warn,guest=info,hearth::run=info";

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once.
pub fn init() {
    init_with_default("info");
}

/// As [`init`], with `default` as the filter when `HEARTH_LOG` is unset.
pub fn init_with_default(default: &str) {
    let filter = EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}
