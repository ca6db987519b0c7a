#!/usr/bin/env bash
# cvmd's main job on this machine, end to end: build cvmd, start a local
# registry, build the example systemd workspace image (images/build.sh)
# and push it there, boot it with `cvmd run` under runc (standing in for
# sysbox-runc), wait until systemd says it is up, then stop cvmd with
# SIGTERM as Kubernetes would and show that it exits 0 and leaves nothing
# mounted. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The dev profile (inflate and sha256 optimised even there, see Cargo.toml):
# the same build the tests use, so running both compiles once. Release
# builds for shipping are images/outer/Dockerfile's (docs/shipping.md).
cargo build --locked --workspace --bins

work=$(mktemp -d /tmp/cvmd-demo.XXXXXX)
# The workspace's root is an unprivileged host ID: it must be able to
# search down to its rootfs under the state dir, as it can in a pod's
# emptyDir (mktemp makes the dir 0700).
chmod 0711 "$work"
port=${CVMD_DEMO_PORT:-5055}
# Where cargo put it (CARGO_TARGET_DIR moves the target dir).
cvmd=${CARGO_TARGET_DIR:-$PWD/target}/debug/cvmd
runc=$(command -v runc)
ws=demo-$$
runtime_root=$work/state/runtime
# Where cvmctl finds this cvmd (the control API's socket setting).
export CVMD_SOCKET=$work/cvmd.sock

mounted_under() { awk -v d="$work" 'index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo; }
cleanup() {
  if [[ -n ${cvmd_pid:-} ]] && kill -0 "$cvmd_pid" 2>/dev/null; then
    kill -TERM "$cvmd_pid"; wait "$cvmd_pid" 2>/dev/null || true
  fi
  "$runc" --root "$runtime_root" delete --force "$ws" >/dev/null 2>&1 || true
  [[ -n ${reg_pid:-} ]] && kill "$reg_pid" 2>/dev/null
  # Never remove the dir through a mount left inside it.
  for m in $(mounted_under | sort -r); do umount -l "$m" 2>/dev/null || true; done
  [[ -z $(mounted_under) ]] && rm -rf "$work"
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

echo "== images/build.sh systemd (debootstrap'd Debian + systemd; cached in /var/cache/cvmd-images after the first run)"
image=$(bash images/build.sh --push "127.0.0.1:$port/examples" --insecure systemd)
echo "pushed $image"

echo "== cvmd run (pull into the node cache, rootfs, OCI bundle, runc create/start, supervise)"
t0=$EPOCHREALTIME
"$cvmd" --image "$image" --insecure-registries "127.0.0.1:$port" \
  --cache-dir "$work/cache" --state-dir "$work/state" --workspace "$ws" \
  --runtime runc --log-format text run >"$work/cvmd.log" 2>&1 &
cvmd_pid=$!

cvmctl=${CARGO_TARGET_DIR:-$PWD/target}/debug/cvmctl
# cvmctl reaches cvmd through CVMD_SOCKET (exported above): first the
# readiness probe Kubernetes would use, then systemd itself.
state=
for _ in $(seq 300); do
  kill -0 "$cvmd_pid" 2>/dev/null || { cat "$work/cvmd.log"; echo "cvmd exited early" >&2; exit 1; }
  if "$cvmctl" status --ready >/dev/null 2>&1; then
    state=$("$cvmctl" exec -- systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
  fi
  sleep 0.2
done
[[ $state == running || $state == degraded ]] || {
  cat "$work/cvmd.log"; echo "systemd did not come up (last: '$state')" >&2; exit 1; }
awk -v s="$state" -v a="$t0" -v b="$EPOCHREALTIME" \
  'BEGIN { printf "systemd in the workspace is %s, %.1f s after cvmd started\n", s, b - a }'
inside='echo "inside: $(hostname), PID 1 is $(cat /proc/1/comm), default route via $(awk '"'"'$2 == "00000000" { print $1 }'"'"' /proc/net/route)"'
"$cvmctl" exec -- sh -c "$inside"

echo "== cvmctl status"
CVMCTL_FORMAT=human "$cvmctl" status

echo "== SIGTERM to cvmd (what the kubelet sends): stop signal SIGRTMIN+3 to systemd, then delete and unmount"
kill -TERM "$cvmd_pid"
set +e
wait "$cvmd_pid"
code=$?
set -e
cvmd_pid=
grep -E "stop|ended|exit" "$work/cvmd.log" | tail -n 4 || true
echo "cvmd exited with $code"
left=$(mounted_under)
listed=$("$runc" --root "$runtime_root" list -q 2>/dev/null || true)
if [[ $code != 0 || -n $left || -n $listed ]]; then
  cat "$work/cvmd.log"
  echo "demo failed: exit $code; mounts left: ${left:-none}; runc still lists: ${listed:-none}" >&2
  exit 1
fi
echo "nothing left mounted, no container left: demo OK"
