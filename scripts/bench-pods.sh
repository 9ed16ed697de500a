#!/usr/bin/env bash
# The Pod density benchmark (issues: containerd shim, prewarm pool): memory
# per idle Pod and Pods started per second at 50, 100 and 200 Pods, through
# a private containerd's CRI, a private hearthd and a local docker-registry.
# Needs root. Prints the table that goes into BENCHMARKS.md. With
#   scripts/bench-pods.sh --runwasi /path/to/containerd-shim-wasmtime-v1
# runwasi (built from the public containerd/runwasi source outside this
# repository) is measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -x /bin/busybox ]; then
  apt-get install -y --no-install-recommends busybox-static # the pause image
fi
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
exec target/release/hearth-bench pods --bin-dir target/release "$@"
