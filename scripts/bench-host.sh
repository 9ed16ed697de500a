#!/usr/bin/env bash
# The host benchmark (issue: the host): instantiation, and hello's HTTP
# throughput against `wasmtime serve` (see bench-against-wasmtime.sh).
set -euo pipefail
exec "$(dirname "$0")/bench-against-wasmtime.sh" host "$@"
