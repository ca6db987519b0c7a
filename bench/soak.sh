#!/usr/bin/env bash
# Soak benchmark: pods churning on a node in a box (tests/node/support/):
# each pod a privileged runc container with cvmd as PID 1, all sharing one
# layer cache, starting, stopping, restarting and sometimes SIGKILLing
# workspaces of three small images that share layers, with `cvmd gc
# --budget` and `cvmd prefetch` pods beside them.
#
#   bench/soak.sh                 # 8 pods, 10 minutes, budget 3MiB
#   bench/soak.sh --minutes 1     # a short try
#   bench/soak.sh --pods 4 --seconds 90 --budget 4MiB
#   bench/soak.sh --debug         # the debug build (no release compile)
#
# Prints: starts per minute, p50/p99 start time of a cached image (from
# the pod's creation to `cvmctl status --ready`), failures (must be 0),
# cvmd's peak RSS per pod (VmHWM of PID 1), the cache's peak size against
# the budget. The table also goes to bench/results/soak-latest.md.
# Exits non-zero when any start failed or a check broke.
#
# Needs root, runc, iproute2, debootstrap (the outer tree is built once,
# cached in /var/cache/cvmd-images) and docker-registry.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
SECS=600
PODS=8
BUDGET=3MiB
PROFILE=(--release)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --minutes) SECS=$(($2 * 60)); shift ;;
    --seconds) SECS=$2; shift ;;
    --pods) PODS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --debug) PROFILE=() ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
  shift
done
[[ $(id -u) == 0 ]] || { echo "bench/soak.sh needs root (runc containers, mounts, namespaces)" >&2; exit 2; }

mkdir -p "$BENCH/results"
out=$BENCH/results/soak-latest.md
cd "$ROOT"
echo "soak: $PODS pods, $SECS s, budget $BUDGET" >&2
table=$(mktemp)
trap 'rm -f "$table"' EXIT
status=0
# The pods run cvmctl too: it is its own package, which `--test node` alone does not build.
cargo build "${PROFILE[@]}" --locked -p cvmctl
CVMD_SOAK_SECS=$SECS CVMD_SOAK_PODS=$PODS CVMD_SOAK_BUDGET=$BUDGET CVMD_SOAK_OUT=$table \
  cargo test "${PROFILE[@]}" --test node node_soak -- --ignored --nocapture --exact || status=$?
if [[ -s $table ]]; then
  { echo "# Soak, $(date -u +%Y-%m-%d), $(nproc) cores, ${PROFILE[*]:---debug} build"
    echo "# bench/soak.sh --pods $PODS --seconds $SECS --budget $BUDGET"
    echo
    cat "$table"; } >"$out"
  echo "soak: table in $out" >&2
fi
exit "$status"
