//! sysbox-runc, sysbox-mgr and sysbox-fs: present, and which versions.
//! With another runtime these checks are skipped, never failed.

use std::path::PathBuf;

use super::{Check, Host, Options};

/// Where the outer image installs binaries; PATH of a container's PID 1 is
/// not to be trusted (Kubernetes sets a default one), so a fixed list.
const BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// `name` as a path (under the host's root), or searched in [`BIN_DIRS`].
pub fn find(host: &dyn Host, name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = host.path(name);
        return p.is_file().then_some(p);
    }
    BIN_DIRS
        .iter()
        .map(|d| host.path(d).join(name))
        .find(|p| p.is_file())
}

pub fn checks(host: &dyn Host, opts: &Options) -> Vec<Check> {
    let runc_binary = if opts.sysbox() {
        opts.runtime.as_str()
    } else {
        "sysbox-runc"
    };
    [
        ("sysbox-runc", runc_binary),
        ("sysbox-mgr", "sysbox-mgr"),
        ("sysbox-fs", "sysbox-fs"),
    ]
    .into_iter()
    .map(|(name, binary)| {
        if !opts.sysbox() {
            return Check::skip(name, format!("not used: the runtime is {}", opts.runtime));
        }
        let found = find(host, binary);
        let version = found.as_ref().map(|p| host.version(p));
        judge(name, binary, found, version)
    })
    .collect()
}

pub fn judge(
    name: &str,
    binary: &str,
    found: Option<PathBuf>,
    version: Option<Result<String, String>>,
) -> Check {
    let version = version.unwrap_or_else(|| Err("was not asked its version".into()));
    match (found, version) {
        (None, _) => Check::fail(
            name,
            format!("{binary} not found (looked in {})", BIN_DIRS.join(", ")),
            "install Sysbox in the outer image (nestybox/sysbox releases), or set CVMD_RUNTIME=runc where Sysbox is absent",
        ),
        (Some(path), Ok(v)) => Check::ok(name, format!("{}: {v}", path.display())),
        (Some(path), Err(why)) => Check::warn(
            name,
            format!("{} is there but {why}", path.display()),
            format!("run `{} --version` by hand; reinstall Sysbox if it fails", path.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    #[test]
    fn missing_sysbox_fails_naming_the_binary_and_the_way_out() {
        let c = judge("sysbox-runc", "sysbox-runc", None, None);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.starts_with("sysbox-runc not found"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("CVMD_RUNTIME=runc"));
    }

    #[test]
    fn a_version_is_reported_and_a_mute_binary_warns() {
        let p = PathBuf::from("/usr/bin/sysbox-mgr");
        let c = judge(
            "sysbox-mgr",
            "sysbox-mgr",
            Some(p.clone()),
            Some(Ok("version: 0.6.4".into())),
        );
        assert_eq!(c.status, Status::Ok);
        assert_eq!(c.detail, "/usr/bin/sysbox-mgr: version: 0.6.4");
        let c = judge(
            "sysbox-mgr",
            "sysbox-mgr",
            Some(p),
            Some(Err("did not answer --version within 5s".into())),
        );
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("did not answer"));
    }
}
