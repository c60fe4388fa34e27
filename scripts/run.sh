#!/usr/bin/env bash
# Runs a node on embedded defaults (or ./application.yml if present), from a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace --bins --locked
exec "${CARGO_TARGET_DIR:-target}/release/caldera" "$@"
