#!/usr/bin/env bash
# The blob storage benchmark (issue: blob storage): MB/s and p50/p99 per
# backend (fs, s3 on a moto server the bench starts, remote over TCP to a
# hearth-store process) for 4 KiB, 1 MiB and 64 MiB objects; CPU time per
# GB on both sides of the remote path; copies per byte read. Prints the
# tables that go into BENCHMARKS.md. HEARTH_RDMA_DEVICE names a verbs
# device for the remote-rdma rows (both binaries are then built with
# --features rdma; without one the rows are reported as not run).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
features=()
if [ -n "${HEARTH_RDMA_DEVICE:-}" ]; then features=(--features rdma); fi
cargo build --release -p hearth-store-node --bin hearth-store "${features[@]}"
cargo build --release -p hearth-bench "${features[@]}"
exec target/release/hearth-bench blob "$@"
