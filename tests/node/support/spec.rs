//! The OCI runtime config of a pod's container, as a kubelet (through
//! containerd and runc) makes it for a `privileged: true` container: a pure
//! function of [`PodSpec`], so what a pod gets is read in one place.

use serde_json::{json, Value};
use std::path::PathBuf;

/// A bind mount into the pod (a volume).
pub struct Bind {
    pub source: PathBuf,
    pub destination: &'static str,
    pub read_only: bool,
}

pub struct PodSpec {
    pub hostname: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub rootfs: PathBuf,
    pub binds: Vec<Bind>,
    /// Relative: runc puts it below its own cgroup in every hierarchy.
    pub cgroups_path: String,
    pub capabilities: Vec<&'static str>,
}

/// Capability names by number (linux/capability.h), up to
/// CAP_CHECKPOINT_RESTORE.
const CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability in `bounding` (a `CapBnd:` mask): what a privileged
/// container gets. Asking runc for one outside the runtime's own bounding
/// set fails the start, so a sandbox that lacks some (CAP_SYS_RESOURCE)
/// gets the rest.
pub fn capabilities_in(bounding: u64) -> Vec<&'static str> {
    CAPS.iter()
        .enumerate()
        .filter(|(bit, _)| bounding >> bit & 1 == 1)
        .map(|(_, name)| *name)
        .collect()
}

/// This process's bounding set, from /proc/self/status.
pub fn own_bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// A character device node the pod gets (besides runc's defaults: null,
/// zero, full, random, urandom, tty, ptmx).
fn device(path: &str, major: u32, minor: u32) -> Value {
    json!({"path": path, "type": "c", "major": major, "minor": minor,
           "fileMode": 0o666, "uid": 0, "gid": 0})
}

pub fn config(spec: &PodSpec) -> Value {
    let caps = &spec.capabilities;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        // Privileged: sysfs and the cgroup hierarchies writable. With a
        // cgroup namespace runc mounts each v1 hierarchy rooted at the
        // pod's own cgroup, so the runc inside creates the workspace's
        // cgroups below the pod's (the nested runc needs nothing more).
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "rw"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}),
        // The workspace's /run lives in its own rootfs; the pod's /run is
        // a tmpfs as under containerd, so runc's state is per pod.
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=755"]}),
    ];
    for b in &spec.binds {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if b.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": b.destination, "type": "bind",
                           "source": b.source, "options": options}));
    }
    // No user namespace: a privileged pod has none.
    let namespaces: Vec<Value> = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
        .iter()
        .map(|t| json!({"type": t}))
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": spec.args,
            "env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false
        },
        "root": {"path": spec.rootfs, "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "devices": [device("/dev/fuse", 10, 229), device("/dev/net/tun", 10, 200)],
            // Privileged: every device allowed; no seccomp, no masked or
            // read-only paths.
            "resources": {"devices": [{"allow": true, "access": "rwm"}]},
            "cgroupsPath": spec.cgroups_path
        }
    })
}

#[test]
fn capabilities_follow_the_bounding_set() {
    // This sandbox's set: everything up to CAP_CHECKPOINT_RESTORE but
    // CAP_SYS_RESOURCE (bit 24).
    let caps = capabilities_in(0x1fffeffffff);
    assert_eq!(caps.len(), 40);
    assert!(!caps.contains(&"CAP_SYS_RESOURCE"));
    assert!(caps.contains(&"CAP_SYS_ADMIN") && caps.contains(&"CAP_CHECKPOINT_RESTORE"));
}
