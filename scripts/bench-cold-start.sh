#!/usr/bin/env bash
# The Pod cold-start benchmark (issue: prewarm pool): first CRI call to first
# HTTP 200, for Hearth (pool hit, pool miss, nothing cached), runwasi and
# runc, on one private containerd in one run. Needs root. Writes the chart to
# benchmarks/cold-start.svg and prints the table that goes into BENCHMARKS.md.
#
# The runwasi scenario needs runwasi's containerd-shim-wasmtime-v1, built
# from the public containerd/runwasi source outside this repository:
#   scripts/bench-cold-start.sh --runwasi /path/to/containerd-shim-wasmtime-v1
# Without --runwasi that scenario is skipped with a note. With
#   --shim-before /path/to/an/earlier/containerd-shim-hearth-v1
# that build's pool hit runs in the same run (before/after). Writes the
# phase chart to benchmarks/pod-start-phases.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -x /bin/busybox ]; then
  apt-get install -y --no-install-recommends busybox-static
fi
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
chart=(--chart benchmarks/cold-start.svg)
phase_chart=(--phase-chart benchmarks/pod-start-phases.svg)
for arg in "$@"; do
  case "$arg" in
    --chart | --chart=*) chart=() ;;
    --phase-chart | --phase-chart=*) phase_chart=() ;;
  esac
done
mkdir -p benchmarks
exec target/release/hearth bench cold-start --bin-dir target/release "${chart[@]}" "${phase_chart[@]}" "$@"
