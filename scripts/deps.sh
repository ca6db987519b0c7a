#!/usr/bin/env bash
# Installs the Debian packages cvmd's build, demo, tests and benchmark use
# (protobuf-compiler: protoc, which containerd-client's build script needs).
# Idempotent: does nothing when everything is already there.
set -euo pipefail
# iptables, iproute2: the workspace network; python3: the fake sysbox daemons
# of tests/run/launch; util-linux: unshare and nsenter; protobuf-compiler:
# build.rs compiles the control API (and containerd's) with protoc; gcc,
# libc6-dev: tests/run/escape.rs builds its static attempt program.
pkgs=(protobuf-compiler docker-registry runc skopeo umoci busybox-static apache2-utils openssl containerd debootstrap time iptables iproute2 python3 util-linux
  python3-venv gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged registry service would hold port 5000 with its own config;
# our demo and tests start private instances instead.
systemctl disable --now docker-registry.service >/dev/null 2>&1 || true

# kubernetes-validate checks deploy/kubernetes/ against the Kubernetes API
# schemas it ships (no network at validation time); tests/repo/manifests.rs runs
# it. Pinned, in its own venv, with Debian's python3.
venv=${CVMD_TOOLS_VENV:-/opt/cvmd-tools/venv}
kv_version=1.37.0
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$kv_version"; then
  echo "installing kubernetes-validate $kv_version into $venv" >&2
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version"
fi
# python-hcl2 parses the Coder template's Terraform (deploy/coder/) for
# tests/repo/coder_template.rs: a syntax error fails there, not at `coder
# templates push`. Pinned, in the same venv.
hcl2_version=8.1.4
if [ "$("$venv/bin/python3" -c 'import importlib.metadata as m; print(m.version("python-hcl2"))' 2>/dev/null)" != "$hcl2_version" ]; then
  echo "installing python-hcl2 $hcl2_version into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "python-hcl2==$hcl2_version"
fi

# Newer containerd releases for tests/pull/containerd_backend.rs: the transfer
# service (containerd 1.7 and 2.x) is what cvmd uses where it exists, and
# Debian 12 has only 1.6. Debian's own builds from trixie (1.7) and sid
# (2.x), fetched by apt from a private source list (so apt checks the
# archive signatures and hashes) and unpacked under /opt: nothing on the
# host's apt sources or /usr/bin changes. They need libc6 >= 2.34; bookworm
# has 2.36.
ctd_root=${CVMD_TOOLS_CONTAINERD:-/opt/cvmd-tools/containerd}
need_ctd=()
for suite in trixie sid; do
  [[ -x $ctd_root/$suite/usr/bin/containerd ]] || need_ctd+=("$suite")
done
if ((${#need_ctd[@]})); then
  echo "installing containerd from Debian ${need_ctd[*]} into $ctd_root" >&2
  apt_dir=$(mktemp -d)
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  # The Debian mirror apt already uses for bookworm serves the other suites
  # too (no mirror's name is written here).
  . "$(dirname "$0")/../images/mirror.sh"
  mirror=$(apt_mirror bookworm | head -n1)
  [[ -n $mirror ]] || { echo "scripts/deps.sh: apt has no source for Debian bookworm" >&2; exit 1; }
  for suite in "${need_ctd[@]}"; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main"
  done >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -q >/dev/null
  for suite in "${need_ctd[@]}"; do
    version=$(apt-cache "${apt_opts[@]}" madison containerd |
      awk -F'|' -v s="$suite/main" '$3 ~ s { gsub(/ /, "", $2); print $2; exit }')
    [[ -n $version ]] || { echo "Debian $suite has no containerd package" >&2; exit 1; }
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" download -q "containerd=$version" >/dev/null)
    rm -rf "$ctd_root/$suite.new"
    mkdir -p "$ctd_root/$suite.new"
    dpkg-deb -x "$apt_dir"/containerd_*.deb "$ctd_root/$suite.new"
    rm -f "$apt_dir"/containerd_*.deb
    rm -rf "$ctd_root/$suite"
    mv "$ctd_root/$suite.new" "$ctd_root/$suite"
    "$ctd_root/$suite/usr/bin/containerd" --version >&2
  done
fi
