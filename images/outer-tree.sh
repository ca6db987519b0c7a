#!/usr/bin/env bash
# Builds the root file system of a stand-in for the outer image
# (images/outer/Dockerfile) offline, for tests that run cvmd as PID 1 of a
# privileged container the way a node does (tests/node/support/):
#
#   images/outer-tree.sh [--cache DIR] [--mirror URL]
#
# prints the path of the tree: a debootstrap'd minbase Debian bookworm with
# runc (standing in for sysbox-runc), iptables, iproute2 and
# ca-certificates. cvmd and cvmctl are not in it: the tests bind-mount the
# binaries they built at /usr/local/bin, so no rebuild of the tree is ever
# needed. The tree is kept in the cache dir [default: /var/cache/cvmd-images]
# under a key of its contents and reused; use it read-only (as an overlay's
# lower dir).
#
# Needs root (debootstrap), debootstrap, flock.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
# Bump when what goes into the tree changes in a way the key cannot see.
version=v1
packages=runc,iptables,iproute2,ca-certificates
cache=/var/cache/cvmd-images
mirror=

die() { echo "images/outer-tree.sh: $*" >&2; exit 1; }
log() { echo "images/outer-tree.sh: $*" >&2; }

while (($#)); do
  case $1 in
    --cache) cache=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $(id -u) == 0 ]] || die "debootstrap needs root: run as root"
for tool in debootstrap flock; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/deps.sh installs it)"
done
. "$here/mirror.sh"
[[ -n $mirror ]] || mirror=$(apt_mirror "$suite" | head -n1 || true)
[[ -n $mirror ]] || die "apt has no source for Debian $suite to build from: pass --mirror URL"

key=$(printf '%s\n' "$version" "$suite" "$packages" | sha256sum | cut -c1-12)
mkdir -p "$cache"
tree=$cache/$suite-outer-$key

# Mounts at or below $1 (debootstrap binds /proc, /sys and /dev entries
# into the target and may leave them on failure).
mounts_under() {
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}

# Removes the build dir, unless a mount is left below it (removing would
# then descend into the host's /proc, /sys or /dev).
release() {
  local m
  for m in $(mounts_under "$1/root" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  if [[ -n $(mounts_under "$1/root") ]]; then
    log "mounts left under $1/root; unmount them and remove the dir by hand"
    return
  fi
  rm -rf "$1"
}

build() {
  local work=$1 m
  log "debootstrap $suite ($packages) from $mirror"
  mkdir -p "$cache/debs"
  if ! debootstrap --variant=minbase --include="$packages" --cache-dir="$cache/debs" \
      "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  for m in $(mounts_under "$work/root" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  [[ -z $(mounts_under "$work/root") ]] || die "mounts left under $work/root; remove it by hand"
  # The runtime provides /dev; the build host's name and apt's downloads
  # do not belong in an image.
  find "$work/root/dev" -mindepth 1 -delete
  rm -f "$work/root/etc/hostname"
  find "$work/root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  rm -rf "$work/root/var/lib/apt/lists/"*
  # Where the pod's volumes are mounted (deploy/kubernetes/workspace-pod.yaml),
  # so a read-only lower dir needs no new dirs at start.
  mkdir -p "$work/root/var/lib/cvmd" "$work/root/run/cvmd" "$work/root/usr/local/bin"
}

(
  # One builder per cache, also across concurrent test runs.
  flock 9
  if [[ ! -d $tree ]]; then
    t0=$SECONDS
    work=$(mktemp -d "$cache/.outer-build.XXXXXX")
    trap 'release "$work"' EXIT
    build "$work"
    # By rename: a crash never leaves a half-built tree under the name.
    mv "$work/root" "$tree"
    log "built the outer tree in $((SECONDS - t0)) s"
  fi
) 9>"$cache/$suite-outer.lock" >&2
echo "$tree"
