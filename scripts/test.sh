#!/usr/bin/env bash
# Runs every check and test. Needs root (the tests start a real registry and
# unpack with real ownership and device nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --no-fail-fast
