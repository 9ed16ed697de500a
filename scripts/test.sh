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
# The RDMA verbs transport builds (and lints) here; its tests run when
# HEARTH_RDMA_DEVICE names a device and otherwise print why they did not.
cargo clippy -p hearth-host -p hearth-blob -p hearth-store-node -p hearth-bench --all-targets --features hearth-host/rdma,hearth-store-node/rdma,hearth-bench/rdma -- -D warnings
cargo test --workspace --no-fail-fast
cargo test -p hearth-store-node --features rdma --test rdma -- --nocapture
