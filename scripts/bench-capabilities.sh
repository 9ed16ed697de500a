#!/usr/bin/env bash
# The capabilities benchmark (issue: state, invocation and config): a state
# get/set as a host call against the same operation through a Dapr-style
# sidecar hop, on the embedded backend and on Redis (a redis-server the bench
# starts on loopback), and invoke's local fast path against its HTTP path.
# Prints the table that goes into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
exec target/release/hearth-bench capabilities "$@"
