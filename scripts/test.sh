#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: setup, formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo fmt --manifest-path functions/Cargo.toml --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
