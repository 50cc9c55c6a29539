#!/usr/bin/env bash
# Benchmarks pipelines on one node and on a three-node cluster, measured in the same run: time
# from `git push` returning to the first job starting, and trivial jobs completed per minute.
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p wharf -p wharf-bench
exec target/release/bench-pipelines "$@"
