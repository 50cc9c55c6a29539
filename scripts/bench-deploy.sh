#!/usr/bin/env bash
# Benchmarks deployments on one node: rolling and blue-green release times, the time from a
# failing health check to rollback, and requests per second through the router against an
# instance hit directly, in the same run. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p wharf -p wharf-bench
exec target/release/bench-deploy "$@"
