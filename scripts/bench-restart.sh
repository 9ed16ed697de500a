#!/usr/bin/env bash
# hearthd restarted under load: three Pods of functions/hello through a
# private containerd's CRI, wrk against each, hearthd stopped with SIGTERM
# (an upgrade) and SIGKILL (a crash) mid-run. Needs root. Prints the table
# that goes into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
exec target/release/hearth-bench restart --bin-dir target/release "$@"
