#!/usr/bin/env bash
# Installs the Debian packages cvmd's build, demo, tests and benchmark use
# (protobuf-compiler: protoc, which containerd-client's build script needs).
# Idempotent: does nothing when everything is already there.
set -euo pipefail
# iptables, iproute2: the workspace network; python3: the fake sysbox daemons
# of tests/launch; util-linux: unshare and nsenter.
pkgs=(protobuf-compiler docker-registry runc skopeo umoci busybox-static apache2-utils openssl containerd debootstrap time iptables iproute2 python3 util-linux)
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
