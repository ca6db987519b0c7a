#!/usr/bin/env bash
# Lazy start against a full pull, side by side in one run: the example
# systemd image's eStargz variant (images/build.sh --estargz) booted by
# `cvmd run` under runc on an empty node cache, timed from the start of
# `cvmd run` to systemd's `running` (or `degraded`), over loopback and over
# a slow link (bench/throttle.py: a delay per request and a shared
# bandwidth cap). "full" is the same image with CVMD_LAZY=off.
#
#   bench/lazy.sh [--runs N] [--slow MS:MBPS] [--out FILE.md] [--only systemd|onefile]
#                 [--image systemd|big]
#
# --image big boots the systemd image with bench/gen_image.py's `big`
# layers on top (5 more layers, ~420 MB compressed): a workspace image of
# a real size, where a full pull over the slow link takes over 20 s.
#
# Reports per link and mode: median seconds to running, the bytes fetched
# on demand by then (lazy; from Status), cvmd's peak RSS while serving
# (VmHWM at running), and a warm start (the image in the cache) for each.
# Then, per link, on bench/gen_image.py's `onefile` image (one 100 MB file,
# eStargz): a lazily started workspace reads that never-read file whole
# (its throughput against the full pull's) and opens a small cold file
# (its extra time over an exec that reads nothing, against the link's
# delay per request).
# Needs root, runc, docker-registry, python3, curl and what
# images/build.sh needs; not a test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
die() { echo "bench/lazy.sh: $*" >&2; exit 1; }
RUNS=3 SLOW=20:25 OUT= ONLY= IMAGE=systemd
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --slow) SLOW=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ $(id -u) == 0 ]] || die "run as root"
for t in docker-registry runc python3 curl skopeo; do command -v "$t" >/dev/null || die "$t is not installed"; done
CVMD=${CVMD_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/cvmd}
CVMCTL=$(dirname "$CVMD")/cvmctl
[[ -x $CVMD && -x $CVMCTL ]] || die "no $CVMD or $CVMCTL: cargo build --release --workspace --bins"

WORK=$(mktemp -d /var/tmp/cvmd-lazy-bench.XXXXXX)
chmod 755 "$WORK"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for m in $(awk -v d="$WORK/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(free_port) slow_port=$(free_port)
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
pids+=($!)
python3 "$here/throttle.py" "$slow_port" "127.0.0.1:$port" --delay-ms "${SLOW%%:*}" --mbps "${SLOW##*:}" >"$WORK/throttle.log" 2>&1 &
pids+=($!)
for u in "http://127.0.0.1:$port/v2/" "http://127.0.0.1:$slow_port/v2/"; do
  for _ in $(seq 100); do curl -fs "$u" >/dev/null && break; sleep 0.1; done
done

seq_no=0
# stack LAYOUT TAG EXTRA_LAYOUT NEW_TAG: LAYOUT:NEW_TAG is LAYOUT:TAG with
# EXTRA_LAYOUT:latest's layers on top (blobs linked, config and manifest
# rewritten).
stack() {
  python3 - "$@" <<'PY'
import hashlib, json, os, sys
base, tag, extra, new_tag = sys.argv[1:5]
def path(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
def load(layout, digest):
    with open(path(layout, digest), "rb") as f:
        return json.load(f)
def tagged(layout, name):
    index = json.load(open(os.path.join(layout, "index.json")))
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
            return index, m
    sys.exit(f"no {name} in {layout}")
def put(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(path(base, digest), "wb") as f:
        f.write(data)
    return digest, len(data)
index, desc = tagged(base, tag)
manifest = load(base, desc["digest"])
config = load(base, manifest["config"]["digest"])
_, extra_desc = tagged(extra, "latest")
extra_manifest = load(extra, extra_desc["digest"])
extra_config = load(extra, extra_manifest["config"]["digest"])
for layer in extra_manifest["layers"]:
    if not os.path.exists(path(base, layer["digest"])):
        os.link(path(extra, layer["digest"]), path(base, layer["digest"]))
manifest["layers"] += extra_manifest["layers"]
config["rootfs"]["diff_ids"] += extra_config["rootfs"]["diff_ids"]
config["history"] = config.get("history", []) + extra_config.get("history", [])
digest, size = put(json.dumps(config).encode())
manifest["config"].update(digest=digest, size=size)
digest, size = put(json.dumps(manifest).encode())
index["manifests"].append({"mediaType": desc["mediaType"], "digest": digest, "size": size,
                           "annotations": {"org.opencontainers.image.ref.name": new_tag}})
with open(os.path.join(base, "index.json"), "w") as f:
    json.dump(index, f)
PY
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
table=$WORK/table.md onefile_table=$WORK/onefile.md
: >"$table"; : >"$onefile_table"
if [[ $ONLY != onefile ]]; then
case $IMAGE in
  systemd)
    echo "== building the example systemd image and its eStargz copy" >&2
    ref=$(CVMD=$CVMD bash "$root/images/build.sh" --push "127.0.0.1:$port/examples" --insecure --estargz systemd | tail -n1)
    [[ $ref == *-estargz ]] || die "images/build.sh printed $ref" ;;
  big)
    echo "== building the systemd image with the big layers on top, and its eStargz copy" >&2
    bash "$root/images/build.sh" --layout "$WORK/layout" systemd >&2
    python3 "$here/gen_image.py" big "$WORK/big" >/dev/null
    stack "$WORK/layout" debian-systemd-bookworm "$WORK/big" big
    skopeo copy -q --dest-tls-verify=false "oci:$WORK/layout:big" "docker://127.0.0.1:$port/examples/debian-systemd:big"
    rm -rf "$WORK/big"
    CVMD_CACHE_RESERVE=0 "$CVMD" --cache-dir "$WORK/convert-cache" --insecure-registries "127.0.0.1:$port" \
      --log-level warn convert "127.0.0.1:$port/examples/debian-systemd:big" "127.0.0.1:$port/examples/debian-systemd:big-estargz" >&2
    rm -rf "$WORK/convert-cache" "$WORK/layout"
    ref=127.0.0.1:$port/examples/debian-systemd:big-estargz ;;
  *) die "--image is systemd or big" ;;
esac
manifest=$(curl -fs -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://127.0.0.1:$port/v2/examples/debian-systemd/manifests/${ref##*:}")
size=$(python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))' <<<"$manifest")
layers=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["layers"]))' <<<"$manifest")

# boot LINK_PORT MODE CACHE -> "seconds fetched_mib vmhwm_kib"
boot() {
  local at=$1 mode=$2 cache=$3 state r t0 t1 st pid answer source hwm
  seq_no=$((seq_no + 1)); state=$WORK/state-$seq_no; mkdir -p "$state"
  local image=${ref/127.0.0.1:$port/127.0.0.1:$at}
  sync
  t0=$(date +%s%N)
  CVMD_LAZY=$mode CVMD_CACHE_RESERVE=0 "$CVMD" --cache-dir "$cache" --state-dir "$state" \
    --insecure-registries "127.0.0.1:$at" --image "$image" --workspace "lazy-bench-$seq_no" \
    --runtime runc --network none --stop-timeout 20 --log-level warn run >"$state/log" 2>&1 &
  pid=$!
  answer=
  for _ in $(seq 1200); do
    answer=$("$CVMCTL" --socket "$state/cvmd.sock" exec -- systemctl is-system-running 2>/dev/null || true)
    [[ $answer == running || $answer == degraded ]] && break
    kill -0 "$pid" 2>/dev/null || die "cvmd ended: $(tail -5 "$state/log")"
    sleep 0.05
  done
  t1=$(date +%s%N)
  [[ $answer == running || $answer == degraded ]] || die "systemd never ran: $(tail -5 "$state/log")"
  source=$("$CVMCTL" --socket "$state/cvmd.sock" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"]["source"])')
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  local mib
  mib=$(sed -n 's/.*, \([0-9.]*\) MiB fetched on demand.*/\1/p' <<<"$source")
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}') ${mib:--} $hwm"
}

{
  echo "| link | mode | median s to systemd running | runs (s) | MiB fetched on demand by then (of $((size / 1048576)) MiB compressed) | cvmd peak RSS MiB | warm start s | load (1 min) |"
  echo "|---|---|---:|---|---|---:|---:|---|"
} >"$table"
for link in loopback slow; do
  at=$port; [[ $link == slow ]] && at=$slow_port
  declare -A T=() F=() H=()
  for r in $(seq "$RUNS"); do
    for mode in off auto; do
      read -r t f h < <(boot "$at" "$mode" "$WORK/cache-$link-$mode-$r")
      T[$mode]+="$t " F[$mode]+="$f " H[$mode]+="$h "
      echo "  $link $mode run $r: $t s, fetched $f MiB, VmHWM $h KiB" >&2
      # Only the last full run's cache is used again (the warm start).
      # (and the removal's writeback done before the next run starts).
      [[ $mode == off && $r == "$RUNS" ]] || { rm -rf "$WORK/cache-$link-$mode-$r"; sync; }
    done
  done
  # A warm start (lazy start on, as by default) on the last full run's
  # cache, where the image is complete: it must stay a plain warm start.
  read -r w _ _ < <(boot "$at" auto "$WORK/cache-$link-off-$RUNS")
  for mode in off auto; do
    label=full; [[ $mode == auto ]] && label=lazy
    # shellcheck disable=SC2086
    printf '| %s | %s | %s | %s | %s | %d | %s | %s |\n' "$link" "$label" "$(median ${T[$mode]})" \
      "${T[$mode]% }" "${F[$mode]% }" "$(( $(printf '%s\n' ${H[$mode]} | sort -n | tail -1) / 1024 ))" \
      "$w" "$(cut -d' ' -f1 /proc/loadavg)" >>"$table"
  done
  unset T F H
done
fi

# ---- the 100 MB file
if [[ $ONLY != systemd ]]; then
onefile=$WORK/onefile
python3 "$here/gen_image.py" onefile "$onefile" >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$onefile:latest" "docker://127.0.0.1:$port/bench/onefile:latest"
CVMD_CACHE_RESERVE=0 "$CVMD" --cache-dir "$WORK/convert-cache" --insecure-registries "127.0.0.1:$port" \
  --log-level warn convert "127.0.0.1:$port/bench/onefile:latest" "127.0.0.1:$port/bench/onefile:estargz" >&2
one_ref=127.0.0.1:$port/bench/onefile:estargz
big_path= small_path=
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1e9}'; }
{
  echo "| link | full pull s | lazy read of the 100 MB file s | read throughput / full pull's | first small cold file: ms over an empty exec | delay per request ms |"
  echo "|---|---:|---:|---:|---:|---:|"
} >"$onefile_table"
for link in loopback slow; do
  at=$port delay=0; [[ $link == slow ]] && at=$slow_port delay=${SLOW%%:*}
  image=${one_ref/127.0.0.1:$port/127.0.0.1:$at}
  seq_no=$((seq_no + 1))
  sync; t0=$(date +%s%N)
  CVMD_CACHE_RESERVE=0 "$CVMD" --cache-dir "$WORK/one-full-$seq_no" --insecure-registries "127.0.0.1:$at" \
    --log-level warn pull "$image" >/dev/null 2>&1 || die "full pull of $image failed"
  full=$(secs "$t0" "$(date +%s%N)")
  seq_no=$((seq_no + 1)); state=$WORK/state-$seq_no; mkdir -p "$state"
  CVMD_CACHE_RESERVE=0 "$CVMD" --cache-dir "$WORK/one-lazy-$seq_no" --state-dir "$state" \
    --insecure-registries "127.0.0.1:$at" --image "$image" --workspace "lazy-bench-$seq_no" \
    --runtime runc --network none --mounts /bin/busybox:/busybox:ro \
    --command "/busybox sleep 100000" --log-level warn run >"$state/log" 2>&1 &
  pid=$!
  ex() { "$CVMCTL" --socket "$state/cvmd.sock" exec -- /busybox "$@"; }
  for _ in $(seq 600); do ex true 2>/dev/null && break; sleep 0.05; done
  if [[ -z $big_path ]]; then
    # Found by name: listing reads no file's bytes.
    big_path=$(ex find / -xdev -type f -name 'bin0000.so')
    small_path=$(ex find / -xdev -type f -name 'f00000.*')
  fi
  # The small file first, never read before: what it costs beyond an
  # exec that reads nothing (the reads stay inside the workspace).
  t0=$(date +%s%N); ex sh -c true; t1=$(date +%s%N)
  ex sh -c "cat '$small_path' >/dev/null"; t2=$(date +%s%N)
  extra=$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {printf "%.1f", ((c - b) - (b - a)) / 1e6}')
  t0=$(date +%s%N); ex sh -c "cat '$big_path' >/dev/null"; read_s=$(secs "$t0" "$(date +%s%N)")
  kill -TERM "$pid"; wait "$pid" || true
  printf '| %s | %s | %s | %.2f | %s | %s |\n' "$link" "$full" "$read_s" \
    "$(awk -v f="$full" -v r="$read_s" 'BEGIN {print f / r}')" "$extra" "$delay" >>"$onefile_table"
done
fi

{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, runs: $RUNS per mode, interleaved"
  echo "- cvmd: $CVMD ($("$CVMD" --version | head -1))"
  [[ -z ${ref:-} ]] || echo "- image: $ref ($size bytes compressed, $layers layers)"
  echo "- slow link: ${SLOW%%:*} ms per request, ${SLOW##*:} MB/s shared (bench/throttle.py)"
  echo
  cat "$table"
  echo
  echo "The 100 MB file (bench/gen_image.py onefile, eStargz, one chunk per 4 MiB):"
  echo
  cat "$onefile_table"
} | tee ${OUT:+"$OUT"}
