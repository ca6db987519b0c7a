#!/usr/bin/env bash
# cvmd benchmark: cvmd side by side with its peers (skopeo, umoci, containerd)
# on images built on the spot, served by a private docker-registry.
#
#   bench/run.sh                 # small, medium and big images, 3 runs each
#   bench/run.sh --quick         # small + medium only
#   bench/run.sh --image big     # one image (repeatable); also `systemd`,
#                                # the example image (images/build.sh, one
#                                # layer), not in the default set
#   bench/run.sh --runs 5        # more runs (median is reported)
#   bench/run.sh --no-build      # use target/release/cvmd as it is
#   bench/run.sh --slow 20:50    # the slow link: ms per request : MB/s
#   bench/run.sh --phase pull    # only these phases (repeatable)
#   bench/run.sh --containerd bookworm|trixie|sid
#                                # which Debian containerd (1.6, 1.7, 2.x) is
#                                # the peer and the backend's daemon [default:
#                                # sid where scripts/deps.sh installed it]
#
# Needs root (umoci unpack as root, containerd, overlay mounts) and Debian's
# docker-registry, skopeo, umoci, containerd, time, python3.
# Images and the registry's storage are cached in bench/.cache/ (gitignored).
# Results: a table on stdout, bench/results/latest.{md,json}.
#
# Phases (each run is cold: the tool starts from an empty cache/store at a new
# path, after an untimed `sync`; the page cache is kept):
#   pull    content only: cvmd pull --no-unpack  vs  skopeo copy docker:// -> oci:,
#           each over plain HTTP and over HTTPS (a second docker-registry on
#           the same storage, with a certificate of a private CA)
#   slow    the same, plain HTTP, through bench/throttle.py: a link with a
#           delay per request and a bandwidth cap (--slow)
#   unpack  pull + unpack: skopeo copy + umoci unpack  vs  ctr images pull
#           (private containerd, overlayfs snapshotter)  vs  cvmd rootfs
#           vs  `curl | tar -xz` of each layer in turn (one core's worth)
#   warm    everything cached, make a rootfs: ctr snapshots prepare of the
#           image's chain ID + its mount  vs  cvmd rootfs
#   start   `cvmd run` of a workspace that exits at once (busybox-static
#           bound in as its command, under runc), cold: native backend
#           (empty cache) vs containerd backend (fresh private containerd),
#           its content path (cvmd fetches, containerd applies each layer)
#           and its transfer path (containerd >= 1.7 pulls and unpacks)
#   restart the same with the image already there (node cache / containerd)
#
# Adding a tool or phase: define PHASE_TOOL_run (timed; wrap each process in
# `timed` so its peak RSS is kept), and optionally PHASE_TOOL_available
# (non-zero: skipped with a note), _setup (once per image, untimed),
# _prepare (before each run, untimed), _check (after the first run, untimed),
# _cleanup (after each run, untimed); then list TOOL in PHASE_TOOLS[PHASE].
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
CACHE=$BENCH/.cache
RUNS=3
BUILD=1
SELECTED=()
ONLY_PHASES=()
ALL_IMAGES=(small medium big)
KNOWN_IMAGES=(small medium big systemd)
SLOW=20:50
CTRD_RELEASE=
CTRD_TOOLS=${CVMD_TOOLS_CONTAINERD:-/opt/cvmd-tools/containerd}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) SELECTED=(small medium) ;;
    --image) SELECTED+=("$2"); shift ;;
    --runs) RUNS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --slow) SLOW=$2; shift ;;
    --phase) ONLY_PHASES+=("$2"); shift ;;
    --containerd) CTRD_RELEASE=$2; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
  shift
done
[[ ${#SELECTED[@]} -gt 0 ]] || SELECTED=("${ALL_IMAGES[@]}")
for img in "${SELECTED[@]}"; do
  [[ " ${KNOWN_IMAGES[*]} " == *" $img "* ]] || { echo "unknown image: $img (known: ${KNOWN_IMAGES[*]})" >&2; exit 2; }
done
if [[ -z $CTRD_RELEASE ]]; then
  if [[ -x $CTRD_TOOLS/sid/usr/bin/containerd ]]; then CTRD_RELEASE=sid; else CTRD_RELEASE=bookworm; fi
fi
case $CTRD_RELEASE in
  bookworm) CTRD_BIN=/usr/bin ;;
  trixie|sid) CTRD_BIN=$CTRD_TOOLS/$CTRD_RELEASE/usr/bin ;;
  *) echo "unknown containerd release: $CTRD_RELEASE (bookworm, trixie, sid)" >&2; exit 2 ;;
esac
[[ -x $CTRD_BIN/containerd && -x $CTRD_BIN/ctr ]] || { echo "no containerd in $CTRD_BIN (bash scripts/deps.sh installs trixie's and sid's)" >&2; exit 2; }
export CTRD_BIN  # report.py reads the version
[[ $(id -u) == 0 ]] || { echo "bench/run.sh needs root (umoci unpack, containerd, mounts)" >&2; exit 2; }
[[ $SLOW =~ ^[0-9.]+:[0-9.]+$ ]] || { echo "--slow wants MS:MBPS, e.g. 20:50" >&2; exit 2; }
for tool in docker-registry skopeo umoci containerd ctr python3 curl openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install docker-registry skopeo umoci containerd time python3 curl openssl)" >&2; exit 2; }
done
[[ -x /usr/bin/time ]] || { echo "missing GNU time (apt-get install time)" >&2; exit 2; }

if [[ $BUILD == 1 ]]; then
  echo "== cargo build --release"
  (cd "$ROOT" && cargo build --release --locked --workspace --bins 2>&1 | tail -n 2)
fi
CVMD=${CVMD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cvmd}  # CVMD_BIN: try another build
[[ -x $CVMD ]] || { echo "no $CVMD: build it first" >&2; exit 2; }

mkdir -p "$CACHE/images" "$CACHE/registry"
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
mkdir -p "$WORK/tmp" "$WORK/logs"
# The workspace's root (a uid of its user namespace) must reach its rootfs
# under $WORK: mktemp made it 0700.
chmod 755 "$WORK"
# No cache reserve: a shared build machine's disk may sit below 10% free,
# and the benchmark deletes its trees only at the end (see FRESH PATHS).
export CVMD_CACHE_RESERVE=0
export TMPDIR=$WORK/tmp        # nothing goes to /tmp
RESULTS=$WORK/results.tsv
RSS_FILE=$WORK/rss  # timed runs outside a measured run (setups) write here
: >"$RESULTS"
REG_PIDS=()
CTRD_PID=

# ---------------------------------------------------------------- plumbing

unmount_under() {  # every mount under $1, deepest first
  local dir=$1 m
  for m in $(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  set +e
  stop_containerd
  for p in "${REG_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  unmount_under "$WORK"
  rm -rf "$WORK"
  date +%s >"$CACHE/deleted-at"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { printf '   %s\n' "$*"; }

# timed CMD...: runs CMD with GNU time, appending its peak RSS (KiB) to $RSS_FILE.
timed() { /usr/bin/time -f %M -a -o "$RSS_FILE" "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# One storage, three ways in: plain HTTP (REG), HTTPS (REG_TLS, a leaf
# certificate of a private CA: rustls refuses a CA certificate as a
# server's) and the slow link (REG_SLOW, bench/throttle.py before REG).
start_registry() {
  local port tls_port slow_port
  port=$(free_port); tls_port=$(free_port); slow_port=$(free_port)
  REG=127.0.0.1:$port REG_TLS=127.0.0.1:$tls_port REG_SLOW=127.0.0.1:$slow_port
  TLS_DIR=$CACHE/tls
  if [[ ! -f $TLS_DIR/ca.crt ]]; then
    mkdir -p "$TLS_DIR"
    (
      cd "$TLS_DIR"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=cvmd bench CA" -keyout ca.key -out ca.crt
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr
      printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >leaf.ext
      openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile leaf.ext -out cert.pem
    ) >/dev/null 2>&1
  fi
  local name addr tls
  for name in plain tls; do
    addr=$REG tls=
    if [[ $name == tls ]]; then
      addr=$REG_TLS tls="  tls: {certificate: $TLS_DIR/cert.pem, key: $TLS_DIR/key.pem}"
    fi
    cat >"$WORK/registry-$name.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $CACHE/registry}, maintenance: {uploadpurging: {enabled: false}}}
http:
  addr: $addr
$tls
YML
    docker-registry serve "$WORK/registry-$name.yml" >"$WORK/logs/registry-$name.log" 2>&1 &
    REG_PIDS+=($!)
  done
  python3 "$BENCH/throttle.py" "$slow_port" "$REG" --delay-ms "${SLOW%%:*}" --mbps "${SLOW##*:}" \
    >"$WORK/logs/throttle.log" 2>&1 &
  REG_PIDS+=($!)
  local url
  for url in "http://$REG/v2/" "https://$REG_TLS/v2/" "http://$REG_SLOW/v2/"; do
    for _ in $(seq 100); do curl -fsk "$url" >/dev/null && continue 2; sleep 0.1; done
    echo "the registry at $url did not start:" >&2; cat "$WORK"/logs/registry-*.log "$WORK/logs/throttle.log" >&2; exit 1
  done
}

CTRD=$WORK/containerd
SOCK=$CTRD/c.sock
CTR=("$CTRD_BIN/ctr" --address "$SOCK" -n bench)

CTRD_DATA=$CTRD/data-0
start_containerd() {
  mkdir -p "$CTRD_DATA/root" "$CTRD_DATA/state"
  cat >"$CTRD/config.toml" <<TOML
version = 2
root = "$CTRD_DATA/root"
state = "$CTRD_DATA/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_DATA/opt"
TOML
  "$CTRD_BIN/containerd" --config "$CTRD/config.toml" >>"$WORK/logs/containerd.log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 100); do "$CTRD_BIN/ctr" --address "$SOCK" version >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "containerd did not start:" >&2; tail "$WORK/logs/containerd.log" >&2; exit 1
}

stop_containerd() {
  if [[ -n $CTRD_PID ]]; then
    kill "$CTRD_PID" 2>/dev/null
    wait "$CTRD_PID" 2>/dev/null
    CTRD_PID=
  fi
  unmount_under "$CTRD"
}

# A fresh containerd with an empty root (at a new path, see FRESH PATHS
# below): the cold state for ctr.
CTRD_SEQ=0
reset_containerd() {
  stop_containerd  # its old root stays until the end (see FRESH PATHS)
  CTRD_SEQ=$((CTRD_SEQ + 1)); CTRD_DATA=$CTRD/data-$CTRD_SEQ
  start_containerd
}

# --------------------------------------------------------------- images

# Builds (once; cached by generator stamp) and pushes (once; the registry's
# storage is cached too) bench/NAME:latest.
ensure_image() {
  local img=$1 dir=$CACHE/images/$1 stamp digest have
  if [[ $img == systemd ]]; then
    # The example image, from images/build.sh (its own cache makes a rebuild
    # take seconds); its stats are read from the layout.
    if [[ ! -f $dir/bench-stats.json ]]; then
      echo "== building the example image systemd (once, cached in bench/.cache)"
      rm -rf "$dir"
      "$ROOT/images/build.sh" --layout "$dir" systemd >"$WORK/logs/systemd-build.log" 2>&1 ||
        { tail "$WORK/logs/systemd-build.log" >&2; exit 1; }
      python3 "$BENCH/gen_image.py" --stats-of "$dir" >/dev/null
    fi
  else
  stamp=$(python3 "$BENCH/gen_image.py" --stamp "$img")
  if [[ ! -f $dir/.stamp || $(cat "$dir/.stamp") != "$stamp" ]]; then
    echo "== generating image $img (once, cached in bench/.cache)"
    rm -rf "$dir" "$dir.tmp"
    python3 "$BENCH/gen_image.py" "$img" "$dir.tmp" >/dev/null
    echo "$stamp" >"$dir.tmp/.stamp"
    mv "$dir.tmp" "$dir"
  fi
  fi
  digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest"])' "$dir/bench-stats.json")
  have=$(curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/bench/$img/manifests/latest" 2>/dev/null | tr -d '\r' |
    awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}' || true)
  if [[ $have != "$digest" ]]; then
    echo "== pushing $img to the bench registry (once, cached in bench/.cache)"
    local src="oci:$dir:latest"
    [[ $img == systemd ]] && src="oci:$dir"
    skopeo copy -q --dest-tls-verify=false "$src" "docker://$REG/bench/$img:latest"
  fi
}

stat_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$CACHE/images/$1/bench-stats.json" "$2"; }
layer_digests() {
  python3 - "$CACHE/images/$1" <<'PY'
import json, sys, os
d = sys.argv[1]
m = json.load(open(os.path.join(d, "index.json")))["manifests"][0]["digest"].split(":")[1]
man = json.load(open(os.path.join(d, "blobs/sha256", m)))
for l in [man["config"]] + man["layers"]:
    print(l["digest"].split(":")[1])
PY
}

# The last benchmark's trap deleted its trees (see FRESH PATHS): on a file
# system whose inode allocator skips recently freed inodes, wait until they
# count as old, so that the first runs do not pay for that delete.
# BENCH_SETTLE=0 skips the wait.
settle_after_deletes() {
  local settle=${BENCH_SETTLE:-360} last left
  last=$(cat "$CACHE/deleted-at" 2>/dev/null || echo 0)
  left=$(( last + settle - $(date +%s) ))
  if (( left > 0 )) && skips_freed_inodes "$CACHE"; then
    echo "== waiting ${left} s: the last benchmark deleted its trees less than ${settle} s ago, on ext4 without a journal"
    sleep "$left"
  fi
}
# Whether DIR's file system is ext4 without a journal (no /proc/fs/jbd2 entry).
skips_freed_inodes() {
  local src fstype
  read -r src fstype < <(findmnt -no SOURCE,FSTYPE -T "$1") || return 1
  [[ $fstype == ext4 ]] && ! compgen -G "/proc/fs/jbd2/$(basename "$src")-*" >/dev/null
}

# ------------------------------------------------------ tools per phase
# Each PHASE_TOOL_* function gets the image name as $1. REF is the image's
# reference in the bench registry; R is a directory new to each run, removed
# (after unmounting what is under it) once the run is done.
#
# FRESH PATHS, DEFERRED DELETION: every run writes under a path never used
# before, and nothing a run wrote is deleted before the benchmark ends (the
# trap removes it all). Creating many files soon after deleting a big tree
# costs several times the kernel time on this machine (umoci unpack of
# `big`: ~4.5 s of sys time on an undisturbed file system, ~23 s after
# `rm -rf` of the previous unpack), which swamped the differences between
# the tools. The cause: its ext4 has no journal, and without one ext4's
# inode allocator skips every inode freed in the last 60 s (360 s while its
# inode table block is dirty), looking each one up (perf: recently_deleted,
# find_inode_bit). Needs free disk: ~12 GB for all images.

cvmd_with() {  # cvmd_with CACHE_DIR ARGS...
  local cache=$1; shift
  "$CVMD" --cache-dir "$cache" --state-dir "$cache.state" --insecure-registries "$REG" \
    --log-level warn --log-format text "$@"
}
timed_cvmd() {  # like cvmd_with, but timed (GNU time needs a program, not a function)
  local cache=$1; shift
  timed "$CVMD" --cache-dir "$cache" --state-dir "$cache.state" --insecure-registries "$REG" \
    --log-level warn --log-format text "$@"
}
cvmd_has_rootfs() { "$CVMD" rootfs --help >/dev/null 2>&1; }
umount_if_mounted() { while mountpoint -q "$1" 2>/dev/null; do umount "$1" || return 1; done; }
have_blobs() {  # have_blobs IMAGE DIR: every blob of IMAGE is DIR/<hex>
  local d
  for d in $(layer_digests "$1"); do
    [[ -f $2/$d ]] || { echo "blob $d missing from $2" >&2; return 1; }
  done
}

# --- pull: content only
pull_cvmd_run() { timed_cvmd "$R/cvmd-cache" pull --no-unpack "$REF"; }
pull_cvmd_check() { have_blobs "$1" "$R/cvmd-cache/blobs/sha256"; }

pull_skopeo_run() { timed skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$R/oci:latest"; }
pull_skopeo_check() { have_blobs "$1" "$R/oci/blobs/sha256"; }

# Over HTTPS: the CA is given to each tool the way its users would.
pull_cvmdtls_run() {
  CVMD_EXTRA_CERTS=$TLS_DIR/ca.crt timed "$CVMD" --cache-dir "$R/cvmd-cache" --state-dir "$R/cvmd-cache.state" \
    --log-level warn --log-format text pull --no-unpack "${REF/$REG/$REG_TLS}"
}
pull_cvmdtls_check() { pull_cvmd_check "$@"; }
pull_skopeotls_prepare() { mkdir -p "$R/certs" && cp "$TLS_DIR/ca.crt" "$R/certs/"; }
pull_skopeotls_run() { timed skopeo copy -q --src-cert-dir "$R/certs" "docker://${REF/$REG/$REG_TLS}" "oci:$R/oci:latest"; }
pull_skopeotls_check() { pull_skopeo_check "$@"; }

# --- slow: content only through the slow link
slow_cvmd_run() {
  timed "$CVMD" --cache-dir "$R/cvmd-cache" --state-dir "$R/cvmd-cache.state" --insecure-registries "$REG_SLOW" \
    --log-level warn --log-format text pull --no-unpack "${REF/$REG/$REG_SLOW}"
}
slow_cvmd_check() { pull_cvmd_check "$@"; }
slow_skopeo_run() { timed skopeo copy -q --src-tls-verify=false "docker://${REF/$REG/$REG_SLOW}" "oci:$R/oci:latest"; }
slow_skopeo_check() { pull_skopeo_check "$@"; }

# --- unpack: pull + unpack, cold
unpack_umoci_run() {
  timed skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$R/oci:latest" &&
    timed umoci unpack --image "$R/oci:latest" "$R/bundle"
}
unpack_umoci_check() { [[ -d $R/bundle/rootfs/usr ]] || { echo "umoci: no rootfs/usr" >&2; return 1; }; }

unpack_ctr_prepare() { reset_containerd; }
unpack_ctr_run() {
  timed "${CTR[@]}" images pull --plain-http "$REF" || return 1
  # The work happens in the daemon (fresh for this run): keep its peak RSS.
  awk '/^VmHWM:/ {print $2}' "/proc/$CTRD_PID/status" >>"$RSS_FILE"
}
unpack_ctr_check() {
  local want n; want=$(stat_of "$1" layers)
  n=$("${CTR[@]}" snapshots ls | tail -n +2 | grep -c Committed || true)
  [[ $n == "$want" ]] || { echo "ctr: $n committed snapshots, want $want" >&2; return 1; }
}

# One layer after the other through curl and tar: what one core does with
# the bytes, without verifying digests or handling whiteouts.
unpack_curltar_prepare() { mkdir -p "$R/tree"; }
unpack_curltar_run() {
  local d
  for d in $(layer_digests "$1" | tail -n +2); do
    curl -fsS "http://$REG/v2/bench/$1/blobs/sha256:$d" | timed tar -xzf - -C "$R/tree" || return 1
  done
}
unpack_curltar_check() { [[ -d $R/tree/usr ]] || { echo "curl | tar: no usr/" >&2; return 1; }; }

unpack_cvmd_available() { cvmd_has_rootfs; }
unpack_cvmd_prepare() { mkdir -p "$R/rootfs"; }
unpack_cvmd_run() { timed_cvmd "$R/cvmd-cache" rootfs "$REF" "$R/rootfs"; }
unpack_cvmd_check() { [[ -d $R/rootfs/usr ]] || { echo "cvmd rootfs: no usr/ in the rootfs" >&2; return 1; }; }
unpack_cvmd_cleanup() { umount_if_mounted "$R/rootfs"; }

# --- warm: everything cached, assemble a rootfs (with its mount)
warm_ctr_setup() {
  # The image pulled and unpacked, untimed: the unpack phase's last run left
  # it in the running containerd, else pull it now.
  if ! "${CTR[@]}" images ls -q 2>/dev/null | grep -qxF "$REF"; then
    reset_containerd
    "${CTR[@]}" images pull --plain-http "$REF" >"$WORK/logs/$1-warm-ctr-setup.log" 2>&1 || return 1
  fi
  CHAIN=$(stat_of "$1" chain_id)
}
warm_ctr_prepare() { mkdir -p "$R/mnt"; }
warm_ctr_run() {
  local cmd
  cmd=$(timed "${CTR[@]}" snapshots prepare --target "$R/mnt" "bench-rootfs-$SEQ" "$CHAIN") || return 1
  timed sh -c "$cmd"
}
warm_ctr_check() { [[ -d $R/mnt/usr ]] || { echo "ctr: mounted snapshot has no usr/" >&2; return 1; }; }
warm_ctr_cleanup() { umount_if_mounted "$R/mnt"; "${CTR[@]}" snapshots rm "bench-rootfs-$SEQ" >/dev/null 2>&1 || true; }

warm_cvmd_available() { cvmd_has_rootfs; }
warm_cvmd_setup() {
  WARM_CACHE=$WORK/cvmd-warm-$1
  mkdir -p "$WORK/cvmd-warm-rootfs"
  cvmd_with "$WARM_CACHE" rootfs "$REF" "$WORK/cvmd-warm-rootfs" >"$WORK/logs/$1-warm-cvmd-setup.log" 2>&1
  local rc=$?
  umount_if_mounted "$WORK/cvmd-warm-rootfs"
  return $rc
}
warm_cvmd_prepare() { mkdir -p "$R/rootfs"; }
warm_cvmd_run() { timed_cvmd "$WARM_CACHE" rootfs "$REF" "$R/rootfs"; }
warm_cvmd_check() { unpack_cvmd_check "$@"; }
warm_cvmd_cleanup() { unpack_cvmd_cleanup; }

# --- start / restart: `cvmd run` end to end with each image backend. The
# bench images hold no programs: busybox-static is bound in as the command.
cvmd_run_with() {  # cvmd_run_with CACHE_DIR STATE_DIR BACKEND [CONTAINERD_PULL]: timed
  timed "$CVMD" --cache-dir "$1" --state-dir "$2" --insecure-registries "$REG" \
    --log-level warn --log-format text --image "$REF" --workspace "bench-$$-$SEQ" \
    --runtime runc --image-backend "$3" --containerd-socket "$SOCK" --containerd-namespace bench \
    --containerd-pull "${4:-auto}" \
    --mounts /bin/busybox:/busybox:ro --command "/busybox true" run
}
cvmd_run_available() { [[ -x /bin/busybox ]] && command -v runc >/dev/null; }
start_native_available() { cvmd_run_available; }
start_native_run() { cvmd_run_with "$R/cvmd-cache" "$R/state" native; }
start_containerd_available() { cvmd_run_available; }
start_containerd_prepare() { reset_containerd; }
start_containerd_run() { cvmd_run_with "$R/cvmd-cache" "$R/state" containerd content; }
start_containerd_check() {
  "${CTR[@]}" images ls -q | grep -qxF "$REF" || { echo "the image is not in containerd" >&2; return 1; }
}
has_transfer() { [[ $CTRD_RELEASE != bookworm ]]; }
start_transfer_available() { cvmd_run_available && has_transfer; }
start_transfer_prepare() { reset_containerd; }
start_transfer_run() { cvmd_run_with "$R/cvmd-cache" "$R/state" containerd transfer; }
start_transfer_check() { start_containerd_check; }

restart_native_available() { cvmd_run_available; }
restart_native_setup() {
  RESTART_CACHE=$WORK/cvmd-restart-$1
  SEQ=$((SEQ + 1)); cvmd_run_with "$RESTART_CACHE" "$WORK/restart-state-$SEQ" native >"$WORK/logs/$1-restart-native-setup.log" 2>&1
}
restart_native_run() { cvmd_run_with "$RESTART_CACHE" "$R/state" native; }
restart_containerd_available() { cvmd_run_available; }
restart_containerd_setup() {
  reset_containerd
  SEQ=$((SEQ + 1)); cvmd_run_with "$WORK/restart-unused-$SEQ" "$WORK/restart-state-$SEQ" containerd >"$WORK/logs/$1-restart-containerd-setup.log" 2>&1
}
restart_containerd_run() { cvmd_run_with "$R/cvmd-cache" "$R/state" containerd; }

PHASES=(pull slow unpack warm start restart)
if [[ ${#ONLY_PHASES[@]} -gt 0 ]]; then
  for p in "${ONLY_PHASES[@]}"; do
    [[ " ${PHASES[*]} " == *" $p "* ]] || { echo "unknown phase: $p (known: ${PHASES[*]})" >&2; exit 2; }
  done
  PHASES=("${ONLY_PHASES[@]}")
fi
declare -A PHASE_TOOLS=(
  [pull]="cvmd skopeo cvmdtls skopeotls"
  [slow]="cvmd skopeo"
  [unpack]="umoci ctr cvmd curltar"
  [warm]="ctr cvmd"
  [start]="native containerd transfer"
  [restart]="native containerd"
)
declare -A TOOL_LABEL=(
  [pull_cvmd]="cvmd pull --no-unpack"
  [pull_skopeo]="skopeo copy"
  [pull_cvmdtls]="cvmd pull --no-unpack, HTTPS"
  [pull_skopeotls]="skopeo copy, HTTPS"
  [slow_cvmd]="cvmd pull --no-unpack"
  [slow_skopeo]="skopeo copy"
  [unpack_curltar]="curl | tar -xz, layer by layer"
  [unpack_umoci]="skopeo copy + umoci unpack"
  [unpack_ctr]="ctr images pull (containerd)"
  [unpack_cvmd]="cvmd rootfs (cold)"
  [warm_ctr]="ctr snapshots prepare + mount"
  [warm_cvmd]="cvmd rootfs (warm)"
  [start_native]="cvmd run, native backend"
  [start_containerd]="cvmd run, containerd backend (content)"
  [start_transfer]="cvmd run, containerd backend (transfer)"
  [restart_native]="cvmd run, native (cached)"
  [restart_containerd]="cvmd run, containerd (has it)"
)

# ------------------------------------------------------------- measuring

has_fn() { declare -F "$1" >/dev/null; }
SEQ=0

run_cleanup() {  # the tool's own cleanup and unmounts; R itself stays (see FRESH PATHS)
  if has_fn "${2}_cleanup"; then "${2}_cleanup" "$1" >>"$3" 2>&1 || true; fi
  unmount_under "$R"
}

# measure_phase IMAGE PHASE: RUNS cold runs of each of the phase's tools,
# interleaved (A B C A B C ...) so that a change in the machine's background
# load hits every tool alike. One results line per run.
# The 1-minute load average before each run goes with it (7th field).
result() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "${LOAD1:-NA}" >>"$RESULTS"; }
measure_phase() {
  local img=$1 phase=$2 tool base t0 t1 secs rss log
  local -A TIMES=() DEAD=()
  local tools=()
  for tool in ${PHASE_TOOLS[$phase]}; do
    base=${phase}_${tool}
    if has_fn "${base}_available" && ! "${base}_available"; then
      note "$(printf '%-32s not available (needs cvmd rootfs, or busybox-static and runc for cvmd run); skipped' "${TOOL_LABEL[$base]}")"
      result "$img" "$phase" "$tool" 0 NA NA
    elif has_fn "${base}_setup" && ! "${base}_setup" "$img"; then
      note "${TOOL_LABEL[$base]}: setup failed; skipped"
      result "$img" "$phase" "$tool" 0 FAIL NA
    else
      tools+=("$tool")
    fi
  done
  for RUN in $(seq "$RUNS"); do
    for tool in "${tools[@]}"; do
      [[ -z ${DEAD[$tool]:-} ]] || continue
      base=${phase}_${tool}
      log=$WORK/logs/$img-$base-$RUN.log
      RSS_FILE=$WORK/rss
      : >"$RSS_FILE"
      SEQ=$((SEQ + 1)); R=$WORK/r$SEQ; mkdir -p "$R"
      if has_fn "${base}_prepare"; then "${base}_prepare" "$img" >>"$log" 2>&1; fi
      # Write back what earlier runs left dirty (untimed), so a run does not
      # pay for its predecessor's writeback.
      sync
      LOAD1=$(cut -d' ' -f1 /proc/loadavg)
      t0=$(date +%s%N)
      if ! "${base}_run" "$img" >>"$log" 2>&1; then
        note "${TOOL_LABEL[$base]}: run $RUN FAILED; its log:"; tail -n 15 "$log" | sed 's/^/      /'
        result "$img" "$phase" "$tool" "$RUN" FAIL NA
        DEAD[$tool]=1; run_cleanup "$img" "$base" "$log"; continue
      fi
      t1=$(date +%s%N)
      if [[ $RUN == 1 ]] && has_fn "${base}_check" && ! "${base}_check" "$img" >>"$log" 2>&1; then
        note "${TOOL_LABEL[$base]}: output check FAILED:"; tail -n 5 "$log" | sed 's/^/      /'
        result "$img" "$phase" "$tool" "$RUN" FAIL NA
        DEAD[$tool]=1; run_cleanup "$img" "$base" "$log"; continue
      fi
      secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
      rss=$(grep -E '^[0-9]+$' "$RSS_FILE" | sort -n | tail -n 1)
      result "$img" "$phase" "$tool" "$RUN" "$secs" "${rss:-NA}"
      TIMES[$tool]+="$secs "
      run_cleanup "$img" "$base" "$log"
    done
  done
  for tool in "${tools[@]}"; do
    [[ -n ${DEAD[$tool]:-} ]] || note "$(printf '%-32s %s s' "${TOOL_LABEL[${phase}_${tool}]}" "${TIMES[$tool]% }")"
  done
}

# ------------------------------------------------------------------ main

settle_after_deletes
start_registry
echo "== registry at $REG (storage $CACHE/registry)"
for img in "${SELECTED[@]}"; do ensure_image "$img"; done
start_containerd

started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for img in "${SELECTED[@]}"; do
  REF=$REG/bench/$img:latest
  echo "== $img: $(stat_of "$img" layers) layers, $(stat_of "$img" files) files," \
    "$(( $(stat_of "$img" uncompressed_bytes) / 1000000 )) MB unpacked," \
    "$(( $(stat_of "$img" compressed_bytes) / 1000000 )) MB gzip; $RUNS cold runs each"
  for phase in "${PHASES[@]}"; do
    echo " -- $phase"
    measure_phase "$img" "$phase"
  done
  reset_containerd
done
elapsed=$(( $(date +%s) - started ))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$BENCH/results"
python3 "$BENCH/report.py" --results "$RESULTS" --images "$CACHE/images" --out "$BENCH/results" \
  --runs "$RUNS" --elapsed "$elapsed" --cvmd "$CVMD" --root "$ROOT" --selected "${SELECTED[*]}" \
  --load "start $load_start, end $load_end (1/5/15 min; 2 cores)" \
  --slow "${SLOW%%:*} ms per request, ${SLOW##*:} MB/s shared by all connections (bench/throttle.py)"
