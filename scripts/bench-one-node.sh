#!/usr/bin/env bash
# Benchmarks Wharf on one node against direct gix and the git CLI, measured in the same run,
# and prints a Markdown table (the one in the README). Release build: about 7 minutes the
# first time on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p wharf -p wharf-bench
exec target/release/bench-one-node "$@"
