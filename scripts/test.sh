#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: setup, formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo fmt --manifest-path functions/Cargo.toml --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The kube scenarios (scripts/test-kube.sh runs them) build and lint here.
cargo clippy -p hearth-kube-tests --features kube --all-targets -- -D warnings
# The RDMA verbs transport builds and lints here.
cargo clippy -p hearth-host -p hearth-blob -p hearth-store-node -p hearth-bench --all-targets --features hearth-host/rdma,hearth-store-node/rdma,hearth-bench/rdma -- -D warnings
cargo test --workspace --no-fail-fast
# The RDMA tests run on soft-RoCE `rxe0` in a QEMU VM (tests/rdma-vm), one
# boot per test binary: the verbs transport and what the device refuses
# (store-node), and a function's blobs through hearthd and hearth-store
# over verbs (host). Both binaries come from this build, with `rdma`.
tests/rdma-vm/build.sh
HEARTH_RDMA_DEVICE=rxe0 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/tests/rdma-vm/run" \
  cargo test -p hearth-store-node -p hearth-host --features hearth-store-node/rdma,hearth-host/rdma \
  --no-fail-fast --test rdma -- --nocapture
