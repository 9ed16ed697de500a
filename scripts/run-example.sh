#!/usr/bin/env bash
# Builds Hearth and functions/hello, then serves hello on http://127.0.0.1:8080
# (or $PORT) until Ctrl-C. Then, from another shell: curl localhost:8080
# Extra arguments go to `hearth run`, e.g. --env GREETING=Hi
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --bin hearth -p hearth-host
(cd functions && cargo build --release --target wasm32-wasip2 -p hello --target-dir ../target/wasm-functions)
exec target/debug/hearth run target/wasm-functions/wasm32-wasip2/release/hello.wasm "$@"
