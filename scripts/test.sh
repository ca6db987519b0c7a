#!/usr/bin/env bash
# Runs every check and test. Needs root (the tests start a real registry,
# real runc containers, and unpack with real ownership and device nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The binaries the integration tests run: `cargo test` builds a package's
# own binaries for its tests, but cvmctl is another package's.
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
# A test whose prerequisite is missing (`require!`, tests/common/prereq.rs)
# says `ignored: TEST: WHY` and returns (under CI=true it fails instead):
# those are counted as not run, not as passed.
awk '/^test result:/ { p += $4; f += $6; i += $8 } /^ignored: / { n++ }
  END { printf "tests: %d passed, %d failed, %d skipped, %d not run for a missing prerequisite\n", p - n, f, i, n }' "$log"
exit "$status"
