#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, build once, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# End-to-end tests start the real binaries: build them first (debug, deps optimised).
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast
