#!/usr/bin/env bash
# Paired A/B runs of two cvmd builds on the same images and registry, to
# measure one change at a time on a shared machine: the two binaries run
# interleaved (the order alternates run by run), so load from other work
# falls on both alike and the ratio new/old stays fair where absolute times
# do not.
#
#   bench/ab.sh OLD_CVMD NEW_CVMD [--runs N] [--image systemd|big]...
#               [--phase unpack|pull-http|pull-https]... [--out FILE.md]
#               [--scratch DIR]
#
# Images (built once into $AB_WORK, default /var/tmp/cvmd-ab):
#   systemd  the example image (images/build.sh systemd --layout): one
#            ~60 MB gzip layer, ~155 MB of tar
#   big      bench/gen_image.py big: 5 layers, ~950 MB
# Phases, each cold (new cache dir per run, after one untimed warm-up pair
# that brings the registry's blobs into the page cache; trees deleted after
# each phase, see run.sh's FRESH PATHS):
#   unpack      cvmd pull (verify + unpack into the layer cache), plain HTTP
#   pull-http   cvmd pull --no-unpack over plain HTTP
#   pull-https  the same over HTTPS (HTTP/2) from the same registry storage
# Both registries are docker-registry (distribution) processes on
# 127.0.0.1 sharing one storage dir; the HTTPS one has a self-signed cert
# passed to cvmd with CVMD_EXTRA_CERTS.
#
# --scratch DIR puts the runs' caches in DIR (say a tmpfs, /dev/shm) and
# deletes each run's right after it: on this shared machine's disk, run
# times grew several-fold over a series as writeback of earlier runs (and
# of other work) piled up, which hid the CPU-side differences.
#
# Output: a markdown table (medians, ratio new/old, peak RSS, user/sys
# time, the load average before each pair) on stdout and in --out.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
die() { echo "bench/ab.sh: $*" >&2; exit 1; }

(($# >= 2)) || die "usage: bench/ab.sh OLD_CVMD NEW_CVMD [--runs N] [--image NAME]... [--phase P]... [--out FILE]"
OLD=$(realpath "$1") NEW=$(realpath "$2"); shift 2
RUNS=5 IMAGES=() PHASES=() OUT= SCRATCH=
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --image) IMAGES+=("$2"); shift 2 ;;
    --phase) PHASES+=("$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
((${#IMAGES[@]})) || IMAGES=(systemd)
((${#PHASES[@]})) || PHASES=(unpack pull-http pull-https)
[[ $(id -u) == 0 ]] || die "run as root (layers keep their owners)"
for t in docker-registry skopeo openssl /usr/bin/time; do
  command -v "$t" >/dev/null || die "$t is not installed"
done

WORK=${AB_WORK:-/var/tmp/cvmd-ab}
mkdir -p "$WORK"
RUN_DIR=$(mktemp -d "$WORK/run.XXXXXX")
CACHES=$RUN_DIR
[[ $SCRATCH ]] && CACHES=$(mktemp -d "$SCRATCH/cvmd-ab.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$RUN_DIR" "$CACHES"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- registries: one storage, plain and TLS
if [[ ! -f $WORK/tls/cert.pem ]]; then
  # A CA and a leaf it signed: rustls refuses a CA certificate as a server's.
  mkdir -p "$WORK/tls"
  (
    cd "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=cvmd bench CA" -keyout ca.key -out ca.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile leaf.ext -out cert.pem
  ) 2>/dev/null
fi
start_registry() {  # start_registry NAME PORT [TLS]
  local cfg=$RUN_DIR/$1.yml tls=
  [[ ${3:-} ]] && tls="  tls:
    certificate: $WORK/tls/cert.pem
    key: $WORK/tls/key.pem"
  cat >"$cfg" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$2
$tls
EOF
  docker-registry serve "$cfg" >"$RUN_DIR/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -fsk "http${3:+s}://127.0.0.1:$2/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "registry $1 did not start: $(cat "$RUN_DIR/$1.log")"
}
HTTP_PORT=$(free_port); start_registry plain "$HTTP_PORT"
HTTPS_PORT=$(free_port); start_registry tls "$HTTPS_PORT" tls

# --- images, once
layout_of() {
  case $1 in
    systemd)
      [[ -f $WORK/systemd/index.json ]] ||
        "$root/images/build.sh" --layout "$WORK/systemd" systemd >&2
      echo "$WORK/systemd" ;;
    big)
      if [[ ! -f $WORK/big/index.json ]]; then
        rm -rf "$WORK/big.tmp"
        python3 "$here/gen_image.py" big "$WORK/big.tmp" >&2 && mv "$WORK/big.tmp" "$WORK/big"
      fi
      echo "$WORK/big:latest" ;;
    *) die "unknown image $1 (systemd, big)" ;;
  esac
}
for img in "${IMAGES[@]}"; do
  if [[ ! -f $WORK/pushed-$img ]]; then
    skopeo copy -q --dest-tls-verify=false "oci:$(layout_of "$img")" \
      "docker://127.0.0.1:$HTTP_PORT/ab/$img:latest"
    touch "$WORK/pushed-$img"
  fi
done

# --- runs
declare -A TIMES RSS CPU
seq_no=0
one() {  # one BIN PHASE IMAGE DIR -> "elapsed rss_kib user sys"
  local bin=$1 phase=$2 img=$3 d=$4 port=$HTTP_PORT scheme=http args=()
  mkdir -p "$d"
  case $phase in
    unpack) ;;
    pull-http) args=(--no-unpack) ;;
    pull-https) args=(--no-unpack); port=$HTTPS_PORT; scheme=https ;;
  esac
  local reg=127.0.0.1:$port
  local insecure=(--insecure-registries "$reg")
  [[ $scheme == https ]] && insecure=()
  sync
  # No cache reserve: a shared build machine's disk may sit below 10% free.
  CVMD_CACHE_RESERVE=0 CVMD_EXTRA_CERTS=$WORK/tls/ca.pem /usr/bin/time -o "$d/time" -f '%e %M %U %S' \
    "$bin" --cache-dir "$d/cache" --state-dir "$d/state" "${insecure[@]}" \
    pull "${args[@]}" "$reg/ab/$img:latest" >"$d/log" 2>&1 ||
    die "$bin $phase $img failed: $(tail -5 "$d/log")"
  cat "$d/time"
  [[ $SCRATCH ]] && rm -rf "$d"
  return 0
}

max() { printf '%s\n' "$@" | sort -g | tail -1; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

report=$RUN_DIR/table.md
{
  echo "| image | phase | old median s | new median s | new/old | old peak RSS MiB | new peak RSS MiB | old user+sys s | new user+sys s | runs old / new (s) | load (1 min) before each pair |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
} >"$report"
for img in "${IMAGES[@]}"; do
  for phase in "${PHASES[@]}"; do
    o_t=() n_t=() o_m=() n_m=() o_c=() n_c=() loads=()
    # One untimed pair first: the registry's blobs into the page cache.
    for bin in "$OLD" "$NEW"; do
      seq_no=$((seq_no + 1))
      one "$bin" "$phase" "$img" "$CACHES/r$seq_no" >/dev/null
    done
    for r in $(seq "$RUNS"); do
      loads+=("$(cut -d' ' -f1 /proc/loadavg)")
      order=(old new); ((r % 2 == 0)) && order=(new old)
      for which in "${order[@]}"; do
        bin=$OLD; [[ $which == new ]] && bin=$NEW
        seq_no=$((seq_no + 1))
        read -r t m u s < <(one "$bin" "$phase" "$img" "$CACHES/r$seq_no")
        c=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
        if [[ $which == old ]]; then o_t+=("$t"); o_m+=("$m"); o_c+=("$c")
        else n_t+=("$t"); n_m+=("$m"); n_c+=("$c"); fi
      done
      echo "  $img $phase run $r: old ${o_t[-1]} s, new ${n_t[-1]} s (load ${loads[-1]})" >&2
    done
    mo=$(median "${o_t[@]}") mn=$(median "${n_t[@]}")
    printf '| %s | %s | %.2f | %.2f | %.2f | %d | %d | %.2f | %.2f | %s / %s | %s |\n' \
      "$img" "$phase" "$mo" "$mn" "$(awk -v a="$mn" -v b="$mo" 'BEGIN {print a / b}')" \
      "$(( $(max "${o_m[@]}") / 1024 ))" "$(( $(max "${n_m[@]}") / 1024 ))" \
      "$(median "${o_c[@]}")" "$(median "${n_c[@]}")" \
      "${o_t[*]}" "${n_t[*]}" "${loads[*]}" >>"$report"
    # Between phases, not between runs: creating files right after a big
    # delete is slower (see run.sh's FRESH PATHS: ext4 without a journal
    # skips recently freed inodes), and both binaries then pay it in the
    # next phase's pairs alike.
    rm -rf "$CACHES"/r[0-9]*
  done
done
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), host: $(nproc) cores, runs: $RUNS per binary, interleaved (order alternates)"
  echo "- old: $OLD ($("$OLD" --version 2>/dev/null | head -1))"
  echo "- new: $NEW ($("$NEW" --version 2>/dev/null | head -1))"
  echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  cat "$report"
} | tee ${OUT:+"$OUT"}
