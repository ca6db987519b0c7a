//! What confines the workspace's root, and a warning with the fix when
//! nothing does: `CVMD_IDMAP=host-unsafe` under runc leaves it in the
//! node's user namespace, where the known container escapes reach the
//! node (docs/security.md).

use super::{Check, Options};

pub fn check(opts: &Options) -> Check {
    let name = "isolation";
    if opts.sysbox() {
        return Check::ok(
            name,
            "sysbox-runc: a user namespace, its own seccomp filter and procfs/sysfs emulation",
        );
    }
    if opts.host_userns {
        return Check::warn(
            name,
            "CVMD_IDMAP=host-unsafe: the workspace's root is the node's root (no user namespace); an escape from it owns the node",
            "unset CVMD_IDMAP (auto: a user namespace with the workspace's own ID range on the node)",
        );
    }
    Check::ok(
        name,
        "runc: a user namespace with its own ID range, a seccomp filter, masked and read-only /proc and /sys paths",
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Options, Status};
    use super::*;

    fn opts(runtime: &str, host_userns: bool) -> Options {
        Options {
            idmap: !host_userns,
            host_userns,
            ..super::super::tests::opts(runtime)
        }
    }

    #[test]
    fn the_host_user_namespace_warns_with_the_fix() {
        let c = check(&opts("runc", true));
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("host-unsafe") && c.detail.contains("node's root"),
            "{c:?}"
        );
        assert!(c.fix.unwrap().contains("unset CVMD_IDMAP"));
    }

    #[test]
    fn a_user_namespace_is_ok() {
        assert_eq!(check(&opts("runc", false)).status, Status::Ok);
        assert_eq!(
            check(&opts("/usr/bin/sysbox-runc", false)).status,
            Status::Ok
        );
    }
}
