//! Capabilities for plain runc: Docker's default set, plus what systemd
//! needs to boot, never more than the outer container's bounding set
//! (runc fails with "unable to apply caps: operation not permitted" on a
//! capability the bounding set lacks; MACHINE-NOTES.md: CAP_SYS_RESOURCE).

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::{error::spec_err, BundleError};

/// Every capability the `caps` crate knows, in bit order
/// (linux/capability.h): what a mask's bits are named.
pub fn known() -> Vec<caps::Capability> {
    let mut all: Vec<caps::Capability> = caps::all().into_iter().collect();
    all.sort_by_key(caps::Capability::index);
    all
}

/// The bit of a capability named without its `CAP_` prefix (`SYS_ADMIN`).
pub fn bit(name: &str) -> Option<u8> {
    format!("CAP_{name}")
        .parse::<caps::Capability>()
        .ok()
        .map(|c| c.index())
}

/// A capability's name without its `CAP_` prefix, as the lists here and
/// the messages a user reads spell it.
pub fn short_name(cap: caps::Capability) -> String {
    let name = cap.to_string();
    name.strip_prefix("CAP_").unwrap_or(&name).to_string()
}

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
    crate::proc_status::parse(status).and_then(|s| s.capbnd)
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
    let status = crate::proc_status::read("self").map_err(|e| BundleError::HostParse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    status.capbnd.ok_or(BundleError::HostParse {
        path,
        reason: "no CapBnd line".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_oci_spec() {
        for c in known() {
            assert!(short_name(c).parse::<Capability>().is_ok(), "{c}");
            assert_eq!(bit(&short_name(c)), Some(c.index()));
        }
        assert_eq!(bit("SYS_RESOURCE"), Some(24));
        assert_eq!(bit("CHECKPOINT_RESTORE"), Some(40));
    }

    #[test]
    fn bounding_set_filters() {
        // This sandbox's mask: everything but SYS_RESOURCE (bit 24).
        let mask = parse_capbnd(&crate::proc_status::sample(0, 0x1fffeffffff, 0, &[])).unwrap();
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
