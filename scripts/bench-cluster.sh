#!/usr/bin/env bash
# Benchmarks a three-node Wharf cluster against a one-node Wharf, measured in the same run, and
# the cost of rebalancing (a node joining, a node draining). Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p wharf -p wharf-bench
exec target/release/bench-cluster "$@"
