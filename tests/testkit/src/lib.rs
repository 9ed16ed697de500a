//! Test support shared by the host's tests and the benchmarks.
//!
//! * Constants with the path of every function in `functions/`, built to
//!   wasm by this crate's build step (see `build.rs`), and
//!   [`foreach_function!`], which lists them.
//! * [`http`]: a minimal HTTP/1 client for talking to a function.
//! * [`process`]: running Hearth's binaries and reading their logs.
//! * [`registry`]: a real `docker-registry` on loopback, and a fault-injecting proxy.
//! * [`services`]: real `redis-server` and PostgreSQL processes on free ports.
//! * [`containerd`]: a private containerd; [`node`]: it with a hearthd and a
//!   registry holding a pause image; [`cri`]: a CRI client playing kubelet.
//! * [`otlp`]: an OTLP/HTTP trace receiver, standing where a collector would.

include!(concat!(env!("OUT_DIR"), "/functions.rs"));

pub mod containerd;
pub mod cri;
pub mod http;
pub mod node;
pub mod otlp;
pub mod process;
pub mod registry;
pub mod services;

/// Every file under `dir`, recursively (to find and damage what a store
/// wrote, say).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Reads a built function's bytes.
pub fn wasm_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The value of the sample `series` (name and labels exactly as printed,
/// e.g. `hearth_function_loads_total{compiled_from="memory"}`) in Prometheus
/// text, or `None` when it is absent. Labelled series may be matched by a
/// prefix ending in a label, e.g. `hearth_pool_hits_total{id="abc"`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.starts_with(series)
                && matches!(line.as_bytes().get(series.len()), Some(b' ' | b',' | b'}'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
