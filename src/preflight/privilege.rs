//! Is the outer container privileged? Its capability sets, read from
//! `/proc/self/status`.

use super::{Check, Host};
use crate::bundle::{capability_bit, capability_name, known_capabilities};
use cvmd_oci::proc_status;

/// CAP_SYS_ADMIN's bit (linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;

/// What cvmd itself cannot work without: mounts (SYS_ADMIN), chowning and
/// reading layers as any owner (CHOWN, DAC_OVERRIDE, FOWNER), device nodes
/// (MKNOD), ID maps (SETUID, SETGID), the workspace's network (NET_ADMIN),
/// and signalling it (KILL).
pub const ESSENTIAL: &[&str] = &[
    "SYS_ADMIN",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "MKNOD",
    "SETUID",
    "SETGID",
    "NET_ADMIN",
    "KILL",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub effective: u64,
    pub bounding: u64,
}

impl Caps {
    pub fn parse(status: &str) -> Option<Caps> {
        let status = proc_status::parse(status)?;
        Some(Caps {
            effective: status.capeff,
            bounding: status.capbnd?,
        })
    }

    pub fn has(&self, bit: u32) -> bool {
        self.effective & (1 << bit) != 0
    }
}

/// Those of `names` (without `CAP_`) up to bit `last` that `mask` lacks.
fn missing(mask: u64, names: &[String], last: usize) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            capability_bit(n).is_some_and(|b| usize::from(b) <= last && mask & (1 << b) == 0)
        })
        .cloned()
        .collect()
}

/// Every capability's name, in bit order.
fn all_names() -> Vec<String> {
    known_capabilities()
        .into_iter()
        .map(capability_name)
        .collect()
}

pub fn read(host: &dyn Host) -> Option<Caps> {
    host.read("/proc/self/status")
        .as_deref()
        .and_then(Caps::parse)
}

pub fn check(host: &dyn Host, caps: Option<Caps>) -> Check {
    let last = host
        .read("/proc/sys/kernel/cap_last_cap")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(known_capabilities().len() - 1);
    judge(caps, last)
}

const PRIVILEGED: &str = "run the outer container privileged (securityContext.privileged: true)";

pub fn judge(caps: Option<Caps>, last_cap: usize) -> Check {
    let name = "privileges";
    let Some(caps) = caps else {
        return Check::fail(
            name,
            "cannot read the capabilities from /proc/self/status",
            "check that /proc is mounted in the outer container",
        );
    };
    let essential: Vec<String> = ESSENTIAL.iter().map(|n| n.to_string()).collect();
    let lacking = missing(caps.effective, &essential, last_cap);
    if !lacking.is_empty() {
        return Check::fail(
            name,
            format!("not privileged: missing CAP_{}", lacking.join(", CAP_")),
            PRIVILEGED,
        );
    }
    let bounded = missing(caps.bounding, &all_names(), last_cap);
    if !bounded.is_empty() {
        return Check::warn(
            name,
            format!(
                "privileged, but the bounding set lacks CAP_{} (the workspace cannot have them)",
                bounded.join(", CAP_")
            ),
            // Already privileged: asking for privileged again changes
            // nothing; the node's container runtime or a policy drops them.
            "nothing to do unless the workspace needs them: allow them in the node's container runtime or security policy",
        );
    }
    Check::ok(name, "privileged: every capability")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn status(eff: u64, bnd: u64) -> String {
        cvmd_oci::proc_status::sample(eff, bnd, 0, &[])
    }

    #[test]
    fn a_full_mask_is_privileged() {
        let all = (1u64 << 41) - 1;
        let c = judge(Caps::parse(&status(all, all)), 40);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.fix.is_none());
    }

    #[test]
    fn this_sandbox_without_sys_resource_warns_naming_it() {
        // MACHINE-NOTES.md: CapBnd 000001fffeffffff, bit 24 missing.
        let mask = 0x0000_01ff_feff_ffff;
        let c = judge(Caps::parse(&status(mask, mask)), 40);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("CAP_SYS_RESOURCE"), "{c:?}");
        assert!(!c.detail.contains("CAP_CHOWN"), "{c:?}");
    }

    #[test]
    fn docker_default_caps_are_not_privileged() {
        // Docker's default effective set: 0x00000000a80425fb.
        let c = judge(Caps::parse(&status(0xa80425fb, 0xa80425fb)), 40);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.starts_with("not privileged"));
        assert!(c.detail.contains("CAP_SYS_ADMIN"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("privileged: true"));
    }

    #[test]
    fn caps_newer_than_the_kernel_are_not_asked_for() {
        let mask = (1u64 << 38) - 1; // up to CAP_AUDIT_READ (37)
        assert_eq!(
            judge(Caps::parse(&status(mask, mask)), 37).status,
            Status::Ok
        );
        assert_eq!(judge(None, 40).status, Status::Fail);
    }
}
