#!/usr/bin/env bash
# The Pod memory benchmark (issue: containerd shim): memory per idle Pod at
# 50 and 200 Pods, through a private containerd's CRI with the `hearth`
# handler, a private hearthd and a local docker-registry. Needs root.
# Prints the table that goes into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
exec target/release/hearth-bench pods --bin-dir target/release "$@"
