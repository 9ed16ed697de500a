#!/usr/bin/env bash
# The WASI 0.3 benchmark (issue: WASI 0.3): p3 against p2 and `wasmtime
# serve`, and memory per request in flight (see bench-against-wasmtime.sh).
set -euo pipefail
exec "$(dirname "$0")/bench-against-wasmtime.sh" p3 "$@"
