#!/usr/bin/env bash
# Benchmarks the metadata store as its history grows: resident memory of an empty store, after
# 1,000 repositories and 1,000,000 records, and after a restart; the apply rate; lookups by id
# and by name at the start and at the end; then `wharf dev` with 10,000 variables of 4 KiB.
# Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p wharf -p wharf-bench
exec target/release/bench-meta "$@"
