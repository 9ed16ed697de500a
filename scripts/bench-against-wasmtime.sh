#!/usr/bin/env bash
# Runs `hearth-bench BENCH` against its peer, `wasmtime serve`:
#   scripts/bench-against-wasmtime.sh BENCH [ARGS...]
# Installs the load generator and the peer, builds Hearth in release, and
# prints the tables that go into BENCHMARKS.md.
#   - wrk from Debian;
#   - wasmtime-cli of the pinned wasmtime version from crates.io, cached
#     under ~/.cache/hearth-bench (built once, about ten minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:?usage: bench-against-wasmtime.sh BENCH [ARGS...]}
shift
./scripts/setup.sh
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
version=$(sed -n 's/^wasmtime = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)
peer_root=${HEARTH_BENCH_CACHE:-$HOME/.cache/hearth-bench}/wasmtime-$version
[ -x "$peer_root/bin/wasmtime" ] || cargo install wasmtime-cli --version "=$version" --locked --root "$peer_root"
cargo build --release -p hearth-host -p hearth-bench
exec target/release/hearth-bench "$bench" --hearth target/release/hearth --wasmtime "$peer_root/bin/wasmtime" "$@"
