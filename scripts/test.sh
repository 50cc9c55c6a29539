#!/usr/bin/env bash
# Runs every test: unit tests of each crate and the integration tests, which start the real
# `wharf` binary and drive it with HTTP and the real git client.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p wharf
cargo nextest run --locked --workspace --no-fail-fast "$@"
