//! Test support shared by the host's tests and the benchmarks.
//!
//! * Constants with the path of every function in `functions/`, built to
//!   wasm by this crate's build step (see `build.rs`), and
//!   [`foreach_function!`], which lists them.
//! * [`http`]: a minimal HTTP/1 client for talking to a function.
//! * [`process`]: running Hearth's binaries and reading their logs.
//! * [`registry`]: a real `docker-registry` on loopback, and a fault-injecting proxy.
//! * [`containerd`]: a private containerd; [`node`]: it with a hearthd and a
//!   registry holding a pause image; [`cri`]: a CRI client playing kubelet.

include!(concat!(env!("OUT_DIR"), "/functions.rs"));

pub mod containerd;
pub mod cri;
pub mod http;
pub mod node;
pub mod process;
pub mod registry;

/// Reads a built function's bytes.
pub fn wasm_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}
