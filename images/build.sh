#!/usr/bin/env bash
# Builds cvmd's example workspace images without a Docker engine and,
# optionally, pushes them to a registry:
#
#   systemd  Debian bookworm (minbase) with systemd as /sbin/init
#   docker   the same plus Debian's docker.io, enabled as a systemd service
#
# debootstrap makes the root file system, GNU tar turns it into one layer,
# umoci writes the OCI layout and image config, skopeo pushes. (Debian
# rather than Ubuntu: only Debian's mirror is reachable where we build.)
#
#   images/build.sh [--cache DIR] [--layout DIR] [--push PREFIX] [--insecure]
#                   [--estargz] [--zstd-chunked] [--tag TAG] [--mirror URL]
#                   IMAGE...
#
#   --cache DIR   keep each image's layer tar (and debootstrap's .debs)
#                 here and reuse it: a rebuild then takes seconds
#                 [default: /var/cache/cvmd-images; '' for none]
#   --layout DIR  write the OCI image layout here [default: a temp dir]
#   --push PREFIX push IMAGE to PREFIX/debian-IMAGE:TAG (skopeo's own
#                 credentials, `skopeo login`, apply) and print that reference
#   --insecure    push over plain HTTP / without TLS verification
#   --estargz     with --push, also push an eStargz copy as
#                 PREFIX/debian-IMAGE:TAG-estargz (made by `cvmd convert`,
#                 $CVMD or cvmd on PATH), which cvmd starts lazily
#   --zstd-chunked  with --push, also push a zstd:chunked copy as
#                 PREFIX/debian-IMAGE:TAG-zstd-chunked (`cvmd convert
#                 --format zstd:chunked`), which cvmd starts lazily too
#   --tag TAG     [default: bookworm]
#   --mirror URL  Debian mirror [default: the one apt uses for bookworm]
#
# Needs root (debootstrap), debootstrap, umoci, skopeo, GNU tar.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
# Bump when what goes into a tree changes in a way the cache key below
# cannot see (it already covers the packages and the masked units).
version=v5
cache=/var/cache/cvmd-images
layout=
push=
tls_verify=true
estargz=
zstd_chunked=
tag=$suite
mirror=
images=()

die() { echo "images/build.sh: $*" >&2; exit 1; }
log() { echo "images/build.sh: $*" >&2; }

while (($#)); do
  case $1 in
    --cache) cache=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    --push) push=${2%/}; shift 2 ;;
    --insecure) tls_verify=false; shift ;;
    --estargz) estargz=1; shift ;;
    --zstd-chunked) zstd_chunked=1; shift ;;
    --tag) tag=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    systemd|docker) images+=("$1"); shift ;;
    *) die "unknown argument '$1' (images: systemd, docker; see --help)" ;;
  esac
done
((${#images[@]})) || die "name an image to build: systemd, docker (see --help)"
[[ -z $estargz || -n $push ]] || die "--estargz needs --push (the copy is made on the registry)"
[[ -z $zstd_chunked || -n $push ]] || die "--zstd-chunked needs --push (the copy is made on the registry)"
[[ $(id -u) == 0 ]] || die "debootstrap needs root: run as root"
for tool in debootstrap umoci skopeo tar flock; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/deps.sh installs it)"
done

# The mirror apt uses (images/mirror.sh), so the build reaches what this
# machine reaches.
. "$here/mirror.sh"
[[ -n $mirror ]] || mirror=$(apt_mirror "$suite" | head -n1 || true)
[[ -n $mirror ]] || die "apt has no source for Debian $suite to build from: pass --mirror URL"

describe() {
  case $1 in
    systemd) echo "Debian $suite with systemd as /sbin/init" ;;
    docker) echo "Debian $suite with systemd as /sbin/init and Docker enabled" ;;
  esac
}

packages_of() {
  case $1 in
    systemd) echo systemd,systemd-sysv,dbus ;;
    # docker.io pulls containerd, runc and iptables; ca-certificates so
    # dockerd can pull from TLS registries.
    docker) echo systemd,systemd-sysv,dbus,docker.io,ca-certificates ;;
  esac
}

# Mounts at or below $1 (debootstrap binds /proc, /sys and, in a container,
# /dev entries into the target and undoes it from an exit trap).
mounts_under() {
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}

# Builds the rootfs of image $1 into $2 (a layer tar), from scratch. Runs
# in a subshell of its own (see layer_tar), so its EXIT trap is its own.
build_tar() {
  local name=$1 out=$2 unit
  work=$(mktemp -d "${TMPDIR:-/tmp}/cvmd-image-$name.XXXXXX")
  partial=$out
  trap 'release "$work"; rm -f "$partial"' EXIT
  local root=$work/root debs=()
  [[ -n $cache ]] && { mkdir -p "$cache/debs"; debs=(--cache-dir="$cache/debs"); }
  log "debootstrap $suite ($(packages_of "$name")) from $mirror"
  if ! debootstrap --variant=minbase --include="$(packages_of "$name")" "${debs[@]}" \
      "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap of $name failed (log above)"
  fi
  detach_mounts "$root"
  # Device nodes, sockets and FIFOs stay out of the layer: the runtime
  # provides /dev, and cvmd refuses device nodes in a layer anyway.
  find "$root" -xdev \( -type b -o -type c -o -type p -o -type s \) -delete
  # The build host's name and apt's downloads do not belong in an image;
  # an empty machine-id makes systemd create one per boot.
  rm -f "$root/etc/hostname"
  find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  rm -rf "$root/var/lib/apt/lists/"*
  : >"$root/etc/machine-id"
  ln -sfn /etc/machine-id "$root/var/lib/dbus/machine-id"
  while read -r unit; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
  done < <(masked_units)
  if [[ $name == docker ]]; then
    # docker.io's postinst enables these already; make it explicit.
    systemctl --root="$root" enable docker.service containerd.service >/dev/null 2>&1 ||
      die "cannot enable docker.service in the $name image"
  fi
  # Every xattr goes in, POSIX ACLs (binary PAX values) included, as
  # Docker and buildah write them: cvmd must unpack them whole.
  tar --create --file="$out" --directory="$root" --numeric-owner --format=posix \
    --xattrs --xattrs-include='*' --sort=name .
}

# Lazily detaches every mount at or below $1, deepest first; dies if any
# is left (removing the dir would then descend into the host's /proc,
# /sys or /dev).
detach_mounts() {
  local m left
  for m in $(mounts_under "$1" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  left=$(mounts_under "$1")
  [[ -z $left ]] || { work=; die "mounts left under $1: $left; unmount them and remove the dir by hand"; }
}

release() {
  [[ -n ${1:-} && -d $1 ]] || return 0
  detach_mounts "$1/root"
  rm -rf "$1"
}

masked_units() {
  sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$here/../systemd/workspace/masked-units" | grep -v '^$'
}

# The layer tar of image $1 (built unless cached); its path on stdout.
layer_tar() {
  local name=$1 key dir
  key=$(printf '%s\n' "$version" "$suite" "$(packages_of "$name")" "$(masked_units)" |
    sha256sum | cut -c1-12)
  if [[ -z $cache ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/cvmd-image-tar.XXXXXX")
  else
    dir=$cache
    mkdir -p "$dir"
  fi
  local tar=$dir/$suite-$name-$key.tar
  (
    # One builder per image and cache, also across concurrent test runs.
    flock 9
    if [[ ! -f $tar ]]; then
      local t0=$SECONDS
      build_tar "$name" "$tar.tmp.$$"
      # By rename: a crash never leaves a half-written tar under the name.
      mv "$tar.tmp.$$" "$tar"
      log "built $name in $((SECONDS - t0)) s"
    else
      log "$name: reusing $tar"
    fi
  ) 9>"$dir/$suite-$name-$key.lock" >&2
  echo "$tar"
}

[[ -n $layout ]] || { layout=$(mktemp -d "${TMPDIR:-/tmp}/cvmd-oci.XXXXXX"); trap 'rm -rf "$layout"' EXIT; }
if [[ ! -f $layout/index.json ]]; then
  # Only ever into an empty or new dir: never remove what a user named.
  [[ ! -e $layout ]] || rmdir "$layout" 2>/dev/null ||
    die "--layout $layout exists and is not an OCI layout: name a new or empty dir"
  umoci init --layout "$layout"
fi

for name in "${images[@]}"; do
  tar=$(layer_tar "$name")
  ref="$layout:debian-$name-$tag"
  umoci rm --image "$ref" 2>/dev/null || true
  umoci new --image "$ref"
  umoci raw add-layer --image "$ref" --history.created_by "images/build.sh $name" "$tar"
  [[ -z $cache ]] && rm -rf "$(dirname "$tar")"
  # SIGRTMIN+3 is how systemd is asked to halt (systemd.io/CONTAINER_INTERFACE);
  # cvmd reads the stop signal from here.
  umoci config --image "$ref" --no-history \
    --config.cmd /sbin/init --config.stopsignal SIGRTMIN+3 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.label org.opencontainers.image.source=cvmd/images/build.sh \
    --config.label "org.opencontainers.image.description=$(describe "$name")"
  umoci gc --layout "$layout"
  log "$name: OCI layout $ref"
  if [[ -n $push ]]; then
    dest="$push/debian-$name:$tag"
    skopeo copy -q --dest-tls-verify="$tls_verify" "oci:$ref" "docker://$dest" >&2
    echo "$dest"
    # Each lazily startable copy, made on the registry by `cvmd convert`.
    for format in ${estargz:+estargz} ${zstd_chunked:+zstd:chunked}; do
      insecure=()
      [[ $tls_verify == false ]] && insecure=(--insecure-registries "${push%%/*}")
      copy="$dest-${format/:/-}"
      # The pull side of convert needs a cache dir: a throwaway one.
      scratch=$(mktemp -d)
      "${CVMD:-cvmd}" --cache-dir "$scratch" --cache-reserve 0 "${insecure[@]}" \
        convert "$dest" "$copy" --format "$format" >&2 ||
        { rm -rf "$scratch"; die "cvmd convert $dest --format $format failed"; }
      rm -rf "$scratch"
      echo "$copy"
    done
  fi
done
