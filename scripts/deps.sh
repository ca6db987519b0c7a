#!/usr/bin/env bash
# Installs the Debian packages cvmd's build, demo, tests and benchmark use
# (protobuf-compiler: protoc, which containerd-client's build script needs).
# Idempotent: does nothing when everything is already there.
set -euo pipefail
# iptables, iproute2: the workspace network; python3: the fake sysbox daemons
# of tests/launch; util-linux: unshare and nsenter; protobuf-compiler:
# build.rs compiles the control API (and containerd's) with protoc.
pkgs=(protobuf-compiler docker-registry runc skopeo umoci busybox-static apache2-utils openssl containerd debootstrap time iptables iproute2 python3 util-linux
  python3-venv)
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
# schemas it ships (no network at validation time); tests/manifests.rs runs
# it. Pinned, in its own venv, with Debian's python3.
venv=${CVMD_TOOLS_VENV:-/opt/cvmd-tools/venv}
kv_version=1.37.0
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$kv_version"; then
  echo "installing kubernetes-validate $kv_version into $venv" >&2
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version"
fi
