#!/usr/bin/env bash
# The blob benchmark over RDMA verbs, on soft-RoCE `rxe0` in the QEMU VM of
# tests/rdma-vm (this machine has no RDMA device): remote-tcp,
# remote-rdma (writes as messages, the default) and remote-rdma-write
# (one-sided writes) against one hearth-store in the same VM and the same
# run, for 4 KiB, 1 MiB and 64 MiB objects; the RDMA rows against TCP as
# ratios; copies per byte read into guest memory over TCP and over verbs.
# Soft-RoCE under TCG is no NIC: read the ratios, not the figures.
#
#   scripts/bench-rdma.sh [--samples N]     # default 20 (64 MiB rows: 3)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
tests/rdma-vm/build.sh
cargo build --release -p hearth-store-node --bin hearth-store --features rdma
cargo build --release -p hearth-bench --features rdma
samples=20
[ "${1:-}" = --samples ] && samples=$2
exec tests/rdma-vm/run target/release/hearth-bench blob --store-bin target/release/hearth-store \
  --backends remote-tcp --rdma-device rxe0 --samples "$samples"
