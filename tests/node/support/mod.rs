//! A node in a box: pods on this machine as Kubernetes runs them, each a
//! privileged runc container of the outer image with cvmd as its PID 1,
//! all sharing one layer cache, reaching the registry over a bridge.
//!
//! - **Pods** ([`Node::start`]): a container of its own PID, mount,
//!   network, cgroup, UTS and IPC namespaces (no user namespace: a
//!   privileged pod has none), every capability this process's bounding set
//!   holds, no seccomp, writable /sys and cgroupfs, /dev with fuse and
//!   net/tun beside runc's defaults ([`spec::config`]). The state dir is a
//!   per-pod dir bind-mounted at /run/cvmd (the emptyDir), the shared cache
//!   a node dir bind-mounted at /var/lib/cvmd (the hostPath), with the env
//!   names of deploy/kubernetes/workspace-pod.yaml, and a
//!   /dev/termination-log file as the kubelet gives. A restarted container
//!   ([`PodConfig::restarted`]) gets its pod's state dir again.
//! - **Operations**: start a pod, wait for its workspace to run (cvmd's log,
//!   then `cvmctl status --ready`), `runc exec` in it, SIGTERM with a grace
//!   period or SIGKILL, read its exit status, log and peak RSS; one-shot
//!   `cvmd pull`, `gc --budget` and `prefetch` pods; stop and restart the
//!   registry ([`Node`]); churn with all of these at once ([`churn`]).
//! - **Outer image** ([`outer::tree`]): images/outer-tree.sh's minbase
//!   bookworm with runc, iptables, iproute2 and ca-certificates; each pod's
//!   root is a private overlay over it. It differs from
//!   images/outer/Dockerfile in that runc stands in for sysbox-runc
//!   (`CVMD_RUNTIME=runc`, no sysbox-mgr or sysbox-fs, no rsync, kmod or
//!   fuse3), no shiftfs source, and cvmd and cvmctl are the test's own
//!   binaries bind-mounted read-only at /usr/local/bin rather than built
//!   into the image (so nothing is rebuilt per test run).
//! - **Network** ([`netns`]): the node is a network namespace with a
//!   bridge; the registry runs in a namespace of its own on it; each pod is
//!   created (`runc create`), given a veth with one end on the bridge and
//!   `eth0` with an address and a default route inside, then started, as a
//!   CNI plugin does. Nothing touches the host's interfaces, addresses or
//!   iptables. Inside, cvmd's own `CVMD_NETWORK=veth` works: the pod has
//!   iptables and its own netns.
//! - **Nested runc**: the runc inside a pod starts the workspace with
//!   nothing added: the cgroup namespace makes each v1 hierarchy (mounted
//!   rw) rooted at the pod's cgroup, so the workspace's cgroups nest below
//!   the pod's; /dev is a tmpfs with device nodes and every device allowed;
//!   /run is a tmpfs of the pod's. The pods' cgroups are made below this
//!   process's own (a relative cgroupsPath), never at a hierarchy's root.
//! - **Exit status**: this process is the pods' subreaper (runc create
//!   leaves PID 1 an orphan), so [`Pod::try_exit`] reads it as a kubelet
//!   would.
//! - **Cleanup**: a pod on drop (SIGKILL if still running, `runc delete`,
//!   its rootfs mount and bundle); the node on drop (containers left by a
//!   panic, mounts, the cgroup parent, the namespaces, which take the
//!   bridge and veths, and the registry).
//!
//! Needs root, runc, iproute2, nsenter, debootstrap (first run: about a
//! minute to build the outer tree, cached in /var/cache/cvmd-images) and
//! docker-registry.

// Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod cgroups;
pub mod checks;
pub mod churn;
pub mod fixtures;
pub mod netns;
pub mod node;
pub mod outer;
pub mod pod;
pub mod soak;
pub mod spec;

pub use node::Node;
pub use pod::{Exit, PodConfig};

use crate::common::prereq::{self, Need};

/// What the harness needs: root, the tools, the registry and the outer
/// tree (built on first use).
pub fn can_run() -> Need {
    prereq::root("runc containers, mounts, namespaces")?;
    for tool in ["runc", "ip", "nsenter", "unshare", "debootstrap"] {
        prereq::tool(tool)?;
    }
    prereq::registry()?;
    outer::tree().map(drop)
}
