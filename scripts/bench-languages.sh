#!/usr/bin/env bash
# Cold start per language (issue: Python and JavaScript guests): time to the
# first response of the same `hello` in Rust, Python and JavaScript, from a
# compile, a compiled-cache hit and a pool hit. Prints the table that goes
# into BENCHMARKS.md. The build step builds the Python and JS components.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
exec target/release/hearth-bench languages "$@"
