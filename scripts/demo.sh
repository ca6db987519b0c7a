#!/usr/bin/env bash
# cvmd's main job on this machine: start a local registry, build a small
# busybox image on the spot, push it, and `cvmd pull` it into a cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked --bins

work=$(mktemp -d /tmp/cvmd-demo.XXXXXX)
port=${CVMD_DEMO_PORT:-5055}
cvmd=./target/release/cvmd
cleanup() {
  "$cvmd" --cache-dir "$work/cache" rootfs --unmount "$work/rootfs" >/dev/null 2>&1 || true
  [[ -n "${reg_pid:-}" ]] && kill "$reg_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
/usr/bin/docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

# A one-layer busybox image, built with umoci (our own, well-formed input).
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:demo" >/dev/null
umoci unpack --rootless --image "$work/oci:demo" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for app in sh ls cat echo sleep; do ln -s busybox "$work/bundle/rootfs/bin/$app"; done
umoci repack --image "$work/oci:demo" "$work/bundle" >/dev/null
umoci config --image "$work/oci:demo" --config.cmd /bin/sh >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$work/oci:demo" "docker://127.0.0.1:$port/demo/busybox:latest"

common=(--insecure-registries "127.0.0.1:$port" --cache-dir "$work/cache" --state-dir "$work/state")
image="127.0.0.1:$port/demo/busybox:latest"
echo "== cvmd pull (cold: download, verify, unpack into the layer cache)"
"$cvmd" "${common[@]}" pull "$image"
echo "== cvmd rootfs (warm: everything cached, an overlay mount)"
"$cvmd" "${common[@]}" rootfs "$image" "$work/rootfs"
ls "$work/rootfs/bin"
