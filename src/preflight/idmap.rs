//! ID-mapped mounts, probed for real on the cache's file system: first a
//! plain ID-mapped mount, then an overlay over an ID-mapped lower.
//!
//! The verdict separates a missing privilege from a missing kernel feature
//! (the rule: never blame the kernel for a missing privilege):
//! EPERM/EACCES without CAP_SYS_ADMIN is "not privileged"; EPERM with it is
//! a security policy (seccomp, AppArmor, SELinux); only EINVAL, ENOSYS or
//! EOPNOTSUPP speak of the kernel or the file system.

use super::kernel::{Version, IDMAPPED_MOUNTS, OVERLAY_IDMAPPED};
use super::{Check, Probe};

/// What a probe's errno means, before any wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Works,
    NotPrivileged,
    Policy,
    /// The kernel is older than the feature.
    KernelTooOld,
    /// The kernel is new enough: the file system (or its configuration)
    /// does not take it.
    Unsupported,
    NoUserNamespace,
    Other,
}

/// The cause of a probe's result; `sys_admin` is whether the process has
/// CAP_SYS_ADMIN, `needs` the kernel the feature arrived in.
pub fn cause(probe: &Probe, sys_admin: bool, kernel: Option<Version>, needs: Version) -> Cause {
    let Probe::Failed { step, errno } = probe else {
        return Cause::Works;
    };
    match *errno {
        libc::EPERM | libc::EACCES if !sys_admin => Cause::NotPrivileged,
        libc::EPERM | libc::EACCES => Cause::Policy,
        _ if step == "user namespace" => Cause::NoUserNamespace,
        libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP => match kernel {
            Some(k) if k < needs => Cause::KernelTooOld,
            // An unknown kernel with ENOSYS: the syscall is not there.
            None if *errno == libc::ENOSYS => Cause::KernelTooOld,
            _ => Cause::Unsupported,
        },
        _ => Cause::Other,
    }
}

fn errno_text(probe: &Probe) -> String {
    match probe {
        Probe::Works => String::new(),
        Probe::Failed { step, errno } => {
            format!("{step}: {}", std::io::Error::from_raw_os_error(*errno))
        }
    }
}

const PRIVILEGED: &str = "run the outer container privileged (securityContext.privileged: true)";
const UNCONFINED: &str = "run the outer container privileged and unconfined (seccompProfile: Unconfined, AppArmor unconfined)";
const SHIFTFS: &str = "or install shiftfs (cvmd shiftfs install)";

/// The check for a plain ID-mapped mount in the cache dir on `fs`.
pub fn judge_idmapped(probe: &Probe, sys_admin: bool, kernel: Option<Version>, fs: &str) -> Check {
    let name = "idmapped-mounts";
    let what = errno_text(probe);
    match cause(probe, sys_admin, kernel, IDMAPPED_MOUNTS) {
        Cause::Works => Check::ok(name, format!("work on the cache's file system ({fs})")),
        Cause::NotPrivileged => Check::fail(
            name,
            format!("not privileged: the probe was refused without CAP_SYS_ADMIN ({what})"),
            PRIVILEGED,
        ),
        Cause::Policy => Check::warn(
            name,
            format!("refused by a security policy although privileged ({what})"),
            UNCONFINED,
        ),
        Cause::KernelTooOld => Check::warn(
            name,
            format!("the kernel has no ID-mapped mounts (5.12+): {what}; workspaces get chowned copies"),
            format!("use kernel 5.19 or newer, {SHIFTFS}"),
        ),
        Cause::Unsupported => Check::warn(
            name,
            format!("the cache's file system ({fs}) does not take ID-mapped mounts on this kernel ({what}); workspaces get chowned copies"),
            format!("put CVMD_CACHE_DIR on ext4, XFS or btrfs (tmpfs from 6.3), {SHIFTFS}"),
        ),
        Cause::NoUserNamespace => Check::warn(
            name,
            format!("cannot create the user namespace the mapping needs ({what})"),
            "enable user namespaces (sysctl -w user.max_user_namespaces=15000 on the node)",
        ),
        Cause::Other => Check::warn(name, format!("probe failed: {what}"), "see the error; re-run `cvmd preflight` with --log-level debug"),
    }
}

/// The check for overlayfs over an ID-mapped lower layer; `None` when it
/// was not probed, with the reason.
pub fn judge_overlay(
    probe: Result<&Probe, &str>,
    sys_admin: bool,
    kernel: Option<Version>,
) -> Check {
    let name = "overlay-idmapped";
    let probe = match probe {
        Ok(p) => p,
        Err(why) => return Check::skip(name, format!("not probed: {why}")),
    };
    let what = errno_text(probe);
    match cause(probe, sys_admin, kernel, OVERLAY_IDMAPPED) {
        Cause::Works => Check::ok(name, "overlayfs mounts ID-mapped layers: cached workspaces share their layers"),
        Cause::NotPrivileged => Check::fail(
            name,
            format!("not privileged: the probe was refused without CAP_SYS_ADMIN ({what})"),
            PRIVILEGED,
        ),
        Cause::Policy => Check::warn(
            name,
            format!("refused by a security policy although privileged ({what})"),
            UNCONFINED,
        ),
        Cause::KernelTooOld => Check::warn(
            name,
            format!("the kernel's overlayfs does not take ID-mapped layers (5.19+): {what}; workspaces get flat copies"),
            format!("use kernel 5.19 or newer, {SHIFTFS}"),
        ),
        Cause::Unsupported => Check::warn(
            name,
            format!("overlayfs refused an ID-mapped lower on the cache's file system ({what}); workspaces get flat copies"),
            "put CVMD_CACHE_DIR on a local ext4, XFS or btrfs file system",
        ),
        Cause::NoUserNamespace => Check::warn(
            name,
            format!("cannot create the user namespace the mapping needs ({what})"),
            "enable user namespaces (sysctl -w user.max_user_namespaces=15000 on the node)",
        ),
        Cause::Other => Check::warn(name, format!("probe failed: {what}"), "see the error; re-run `cvmd preflight` with --log-level debug"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn failed(step: &str, errno: i32) -> Probe {
        Probe::Failed {
            step: step.into(),
            errno,
        }
    }
    const NEW: Option<Version> = Some(Version(6, 18, 0));
    const OLD: Option<Version> = Some(Version(5, 10, 0));

    #[test]
    fn eperm_without_cap_sys_admin_is_a_privilege_not_the_kernel() {
        let p = failed("open_tree", libc::EPERM);
        // Even on an old kernel: the privilege is what stopped the probe.
        for kernel in [NEW, OLD, None] {
            assert_eq!(
                cause(&p, false, kernel, IDMAPPED_MOUNTS),
                Cause::NotPrivileged
            );
        }
        let c = judge_idmapped(&p, false, OLD, "local");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.starts_with("not privileged"), "{c:?}");
        assert!(
            !c.detail.contains("kernel"),
            "never blames the kernel: {c:?}"
        );
        assert!(c.fix.as_deref().unwrap().contains("privileged"));
        let c = judge_overlay(Ok(&failed("mount overlay", libc::EACCES)), false, OLD);
        assert!(
            c.detail.starts_with("not privileged") && !c.detail.contains("kernel"),
            "{c:?}"
        );
    }

    #[test]
    fn eperm_with_cap_sys_admin_is_a_policy() {
        let p = failed("mount_setattr(MOUNT_ATTR_IDMAP)", libc::EPERM);
        assert_eq!(cause(&p, true, NEW, IDMAPPED_MOUNTS), Cause::Policy);
        let c = judge_idmapped(&p, true, NEW, "local");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("security policy"), "{c:?}");
    }

    #[test]
    fn einval_blames_the_kernel_only_when_it_is_too_old() {
        let p = failed("mount_setattr(MOUNT_ATTR_IDMAP)", libc::EINVAL);
        assert_eq!(cause(&p, true, OLD, IDMAPPED_MOUNTS), Cause::KernelTooOld);
        assert_eq!(cause(&p, true, NEW, IDMAPPED_MOUNTS), Cause::Unsupported);
        let c = judge_idmapped(&p, true, NEW, "tmpfs");
        assert!(c.detail.contains("file system (tmpfs)"), "{c:?}");
        let c = judge_idmapped(&p, true, OLD, "local");
        assert!(c.detail.contains("kernel has no ID-mapped mounts"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("shiftfs"));
        // overlay on ID-mapped layers: 5.12..5.19 is too old for overlay.
        let o = failed("mount overlay", libc::EINVAL);
        assert_eq!(
            cause(&o, true, Some(Version(5, 15, 0)), OVERLAY_IDMAPPED),
            Cause::KernelTooOld
        );
        assert_eq!(
            cause(&failed("x", libc::ENOSYS), true, None, IDMAPPED_MOUNTS),
            Cause::KernelTooOld
        );
    }

    #[test]
    fn works_and_not_probed() {
        assert_eq!(
            judge_idmapped(&Probe::Works, true, NEW, "local").status,
            Status::Ok
        );
        let c = judge_overlay(Err("ID-mapped mounts do not work here"), true, NEW);
        assert_eq!(c.status, Status::Skip);
        assert!(c.detail.contains("not probed"));
        let c = judge_idmapped(&failed("user namespace", libc::ENOSPC), true, NEW, "local");
        assert!(c.detail.contains("user namespace"), "{c:?}");
    }
}
