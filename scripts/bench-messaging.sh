#!/usr/bin/env bash
# The messaging benchmark (issue: messaging): publish → handler start,
# redelivery after a nack and sustained throughput through a no-op handler,
# on the embedded broker and on NATS JetStream (a nats-server -js the bench
# starts on loopback). Prints the table that goes into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p hearth-host -p hearth-shim -p hearth-bench
exec target/release/hearth-bench messaging "$@"
