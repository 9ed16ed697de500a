#!/usr/bin/env bash
# The OCI benchmark (issue: OCI distribution): time from `hearth run <reference>`
# to the first HTTP 200, in three cache states, against a docker-registry that
# the bench starts on loopback. Prints the table that goes into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p hearth-host -p hearth-bench
exec target/release/hearth-bench oci --hearth target/release/hearth "$@"
