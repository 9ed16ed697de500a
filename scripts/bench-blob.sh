#!/usr/bin/env bash
# The blob storage benchmark (issue: blob storage): MB/s and p50/p99 per
# backend (fs, s3 on a moto server the bench starts, remote over TCP to a
# hearth-store process) for 4 KiB, 1 MiB and 64 MiB objects; CPU time per
# GB on both sides of the remote path; copies per byte read. Prints the
# tables that go into BENCHMARKS.md. HEARTH_RDMA_DEVICE names a verbs
# device for the RDMA rows (without one they are reported as not run).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p hearth-blob --bin hearth-store
cargo build --release -p hearth-bench
exec target/release/hearth-bench blob "$@"
