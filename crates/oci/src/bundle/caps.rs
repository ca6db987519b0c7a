//! Capabilities for plain runc: Docker's default set, plus what systemd
//! needs to boot, never more than the outer container's bounding set
//! (runc fails with "unable to apply caps: operation not permitted" on a
//! capability the bounding set lacks; MACHINE-NOTES.md: CAP_SYS_RESOURCE).

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::{error::spec_err, BundleError};

/// Kernel capability numbers (linux/capability.h), index = bit.
pub const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set (moby `oci/caps/defaults.go`): what
/// package managers and ordinary services in a workspace expect of root.
pub const DOCKER_DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// What systemd and its units use beyond that: mounts and namespaces for
/// sandboxing (SYS_ADMIN), networkd (NET_ADMIN), rlimits (SYS_RESOURCE),
/// logind/journald (AUDIT_*, DAC_READ_SEARCH, IPC_LOCK, SYS_PTRACE to read
/// other processes' /proc), `systemctl poweroff` (SYS_BOOT), nice levels.
pub const SYSTEMD_EXTRA: &[&str] = &[
    "SYS_ADMIN",
    "NET_ADMIN",
    "SYS_RESOURCE",
    "SYS_PTRACE",
    "SYS_NICE",
    "IPC_LOCK",
    "DAC_READ_SEARCH",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "SYS_BOOT",
    "LINUX_IMMUTABLE",
];

/// runc's `spec` default, what sysbox gets (it ignores spec caps).
pub const RUNC_DEFAULT: &[&str] = &["AUDIT_WRITE", "KILL", "NET_BIND_SERVICE"];

/// The `CapBnd:` mask of a `/proc/<pid>/status` text.
pub fn parse_capbnd(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn bit(name: &str) -> Option<usize> {
    CAP_NAMES.iter().position(|n| *n == name)
}

/// `wanted`, without those the bounding `mask` lacks; names in order.
pub fn filter_bounded(wanted: &[&'static str], mask: u64) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = wanted
        .iter()
        .copied()
        .filter(|n| bit(n).is_some_and(|b| mask & (1 << b) != 0))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The names the process gets, for a flavor and init choice.
pub fn wanted(runc: bool, systemd: bool, mask: u64) -> Vec<&'static str> {
    if !runc {
        return filter_bounded(RUNC_DEFAULT, mask);
    }
    let mut w: Vec<&'static str> = DOCKER_DEFAULT.to_vec();
    if systemd {
        w.extend_from_slice(SYSTEMD_EXTRA);
    }
    filter_bounded(&w, mask)
}

/// Bounding, effective and permitted set to `names`; no inheritable or
/// ambient caps, so a non-root process gains none (Docker's behaviour).
pub fn to_spec(names: &[&str]) -> Result<LinuxCapabilities, BundleError> {
    let set: Capabilities = names
        .iter()
        .filter_map(|n| n.parse::<Capability>().ok())
        .collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(spec_err("capabilities"))
}

/// This process's bounding set, what the inner container may have at most.
pub fn own_bounding_set() -> Result<u64, BundleError> {
    let path = std::path::PathBuf::from("/proc/self/status");
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::HostFile {
        path: path.clone(),
        source,
    })?;
    parse_capbnd(&text).ok_or(BundleError::HostParse {
        path,
        reason: "no CapBnd line".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_oci_spec() {
        for n in CAP_NAMES {
            assert!(n.parse::<Capability>().is_ok(), "{n}");
        }
        assert_eq!(bit("SYS_RESOURCE"), Some(24));
        assert_eq!(bit("CHECKPOINT_RESTORE"), Some(40));
    }

    #[test]
    fn bounding_set_filters() {
        // This sandbox's mask: everything but SYS_RESOURCE (bit 24).
        let mask = parse_capbnd("Name:\tx\nCapBnd:\t000001fffeffffff\n").unwrap();
        assert_eq!(mask, 0x1fffeffffff);
        let w = wanted(true, true, mask);
        assert!(w.contains(&"SYS_ADMIN"));
        assert!(!w.contains(&"SYS_RESOURCE"));
        assert!(wanted(true, true, u64::MAX).contains(&"SYS_RESOURCE"));
        assert!(!wanted(true, false, mask).contains(&"SYS_ADMIN"));
        assert_eq!(
            wanted(false, true, mask),
            vec!["AUDIT_WRITE", "KILL", "NET_BIND_SERVICE"]
        );
        assert!(wanted(true, false, 0).is_empty());
        assert_eq!(parse_capbnd("nothing"), None);
    }

    #[test]
    fn spec_sets() {
        let c = to_spec(&["SYS_ADMIN", "KILL"]).unwrap();
        assert_eq!(c.bounding().as_ref().unwrap().len(), 2);
        assert!(c.ambient().as_ref().unwrap().is_empty());
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("CAP_SYS_ADMIN"), "{json}");
    }

    #[test]
    fn own_set_reads() {
        assert!(own_bounding_set().is_ok());
    }
}
