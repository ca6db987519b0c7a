//! The kernel against what Sysbox needs (docs/ARCHITECTURE.md, "Kernel"), and user
//! namespaces.

use super::{Check, Host, Options};

pub use cvmd_rootfs::version::{Version, IDMAPPED_MOUNTS, OVERLAY_IDMAPPED};

/// openat2(2), with which the unpacker resolves every path of a layer
/// beneath its directory, arrived in 5.6.
pub const OPENAT2: Version = Version(5, 6, 0);

/// Sysbox's minimum: 5.5, or 5.0 on Ubuntu (whose kernels carry shiftfs
/// and the backports Sysbox needs).
pub fn sysbox_minimum(ubuntu: bool) -> Version {
    if ubuntu {
        Version(5, 0, 0)
    } else {
        Version(5, 5, 0)
    }
}

fn is_ubuntu(host: &dyn Host) -> bool {
    host.read("/etc/os-release").is_some_and(|t| {
        t.lines()
            .any(|l| l.trim() == "ID=ubuntu" || l.trim() == "ID=\"ubuntu\"")
    })
}

const NEWER_OR_SHIFTFS: &str =
    "use kernel 5.19 or newer, or install shiftfs (cvmd shiftfs install)";

pub fn check(host: &dyn Host, opts: &Options) -> Check {
    judge(&host.release(), is_ubuntu(host), opts.sysbox())
}

/// The verdict on a kernel release for the chosen runtime.
pub fn judge(release: &str, ubuntu: bool, sysbox: bool) -> Check {
    let name = "kernel";
    let Some(v) = Version::parse(release) else {
        return Check::warn(
            name,
            format!("cannot read a version from the release {release:?}"),
            "check `uname -r`; cvmd needs 5.6 or newer (openat2), Sysbox 5.5 (5.0 on Ubuntu)",
        );
    };
    if v < OPENAT2 {
        return Check::fail(
            name,
            format!("{release} is older than 5.6: cvmd unpacks layers with openat2(2) (RESOLVE_BENEATH), which 5.6 added"),
            "run the node on kernel 5.6 or newer",
        );
    }
    let min = sysbox_minimum(ubuntu);
    if v < min {
        let detail = format!("{release} is older than the {min} Sysbox needs");
        let fix = format!("run the node on kernel {min} or newer");
        return if sysbox {
            Check::fail(name, detail, fix)
        } else {
            Check::warn(name, format!("{detail} (runc does not need it)"), fix)
        };
    }
    if v < IDMAPPED_MOUNTS {
        return Check::warn(
            name,
            format!("{release}: no ID-mapped mounts before 5.12; Sysbox needs shiftfs or chowns each rootfs"),
            NEWER_OR_SHIFTFS,
        );
    }
    if v < OVERLAY_IDMAPPED {
        return Check::warn(
            name,
            format!("{release}: ID-mapped mounts, but overlayfs on ID-mapped layers needs 5.19; below that shiftfs"),
            NEWER_OR_SHIFTFS,
        );
    }
    Check::ok(
        name,
        format!("{release}: ID-mapped mounts and overlayfs on ID-mapped layers (5.19+)"),
    )
}

/// User namespaces: sysbox-runc always makes one; runc only for an ID
/// mapping. `kernel.unprivileged_userns_clone` (Debian/Ubuntu) is not read:
/// it limits unprivileged users only, and cvmd and Sysbox create
/// namespaces as root.
pub fn userns(host: &dyn Host, opts: &Options) -> Check {
    judge_userns(
        host.read("/proc/sys/user/max_user_namespaces").as_deref(),
        opts.sysbox() || opts.idmap,
    )
}

pub fn judge_userns(max: Option<&str>, needed: bool) -> Check {
    let name = "user-namespaces";
    let why = if needed {
        ""
    } else {
        " (not needed by runc without an ID mapping)"
    };
    let bad = |detail: String, fix: &str| {
        let detail = format!("{detail}{why}");
        if needed {
            Check::fail(name, detail, fix)
        } else {
            Check::warn(name, detail, fix)
        }
    };
    match max.map(|m| m.trim().parse::<u64>()) {
        None => bad(
            "the kernel has no user namespaces (/proc/sys/user/max_user_namespaces missing)".into(),
            "use a kernel built with CONFIG_USER_NS=y",
        ),
        Some(Err(_)) => bad(
            "/proc/sys/user/max_user_namespaces is unreadable".into(),
            "check the node's /proc",
        ),
        Some(Ok(0)) => bad(
            "user namespaces are disabled (user.max_user_namespaces = 0)".into(),
            "on the node: sysctl -w user.max_user_namespaces=15000",
        ),
        Some(Ok(n)) => Check::ok(
            name,
            format!("enabled (user.max_user_namespaces = {n}; unprivileged_userns_clone does not matter for root)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    #[test]
    fn versions_parse_from_distribution_releases() {
        assert_eq!(Version::parse("6.18.44-fc-v669"), Some(Version(6, 18, 44)));
        assert_eq!(Version::parse("5.4.0-1049-gke"), Some(Version(5, 4, 0)));
        assert_eq!(Version::parse("5.15"), Some(Version(5, 15, 0)));
        assert_eq!(Version::parse("6.1.0+"), Some(Version(6, 1, 0)));
        assert_eq!(Version::parse("garbage"), None);
    }

    #[test]
    fn kernel_thresholds_for_sysbox() {
        assert_eq!(judge("5.4.0-1049", false, true).status, Status::Fail);
        let c = judge("5.8.0-1049-gke", true, true);
        assert_eq!(c.status, Status::Warn, "5.0+ is enough on Ubuntu: {c:?}");
        assert!(c.detail.contains("shiftfs"), "{c:?}");
        let c = judge("5.15.0-91-generic", false, true);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("5.19"), "{c:?}");
        assert_eq!(judge("6.18.44-fc", false, true).status, Status::Ok);
        assert_eq!(judge("nonsense", false, true).status, Status::Warn);
    }

    #[test]
    fn openat2_is_enough_for_runc() {
        let c = judge("5.6.0", false, false);
        assert_eq!(c.status, Status::Warn, "only the ID-mapping warning: {c:?}");
        assert!(c.detail.contains("5.12"), "{c:?}");
    }

    #[test]
    fn a_kernel_without_openat2_fails_for_every_runtime() {
        for (release, ubuntu, sysbox) in [
            ("4.19.0", false, false),
            ("5.5.19", false, true),
            ("5.4.0-1049-gke", true, true),
        ] {
            let c = judge(release, ubuntu, sysbox);
            assert_eq!(c.status, Status::Fail, "{release}: {c:?}");
            assert!(c.detail.contains("openat2"), "{c:?}");
            assert!(c.fix.as_deref().unwrap().contains("5.6"), "{c:?}");
        }
    }

    #[test]
    fn user_namespaces_disabled_fails_only_when_needed() {
        assert_eq!(judge_userns(Some("0\n"), true).status, Status::Fail);
        let c = judge_userns(Some("0\n"), false);
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.as_deref().unwrap().contains("max_user_namespaces"));
        assert_eq!(judge_userns(None, true).status, Status::Fail);
        let c = judge_userns(Some("96365\n"), true);
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.contains("96365"));
    }
}
