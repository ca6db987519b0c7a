//! sysbox-runc, sysbox-mgr and sysbox-fs: present, and which versions.
//! With another runtime these checks are skipped, never failed.

use std::path::PathBuf;

use super::{Check, Host, Options};

/// Where the outer image installs binaries, searched after PATH: PATH of a
/// container's PID 1 is whatever the image or Kubernetes set, and may miss
/// an sbin dir. The daemons themselves look up their tools on PATH.
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
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .chain(BIN_DIRS.iter().copied())
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
        ("sysbox-runc", runc_binary, None),
        ("sysbox-mgr", opts.sysbox_mgr.as_str(), Some("sysmgr.sock")),
        ("sysbox-fs", opts.sysbox_fs.as_str(), Some("sysfs.sock")),
    ]
    .into_iter()
    .map(|(name, binary, socket)| {
        if !opts.sysbox() {
            return Check::skip(name, format!("not used: the runtime is {}", opts.runtime));
        }
        let found = find(host, binary);
        // A daemon someone else started (the node, a sidecar) serves
        // without its binary in this container; `cvmd run` leaves it be.
        if let (None, Some(socket)) = (&found, socket) {
            let socket = host.path(&opts.sysbox_run_dir.join(socket).to_string_lossy());
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Check::ok(
                    name,
                    format!("already running: {} answers", socket.display()),
                );
            }
        }
        let version = found.as_ref().map(|p| host.version(p));
        judge(name, binary, found, version)
    })
    .collect()
}

/// sysbox-mgr's own needs (docs/ARCHITECTURE.md, "Daemons"): rsync, modprobe and
/// iptables on PATH, and its data root not on overlayfs, tmpfs or NFS (it
/// keeps the inner containers' /var/lib/docker and friends there).
pub fn mgr_needs(host: &dyn Host, opts: &Options) -> Check {
    let name = "sysbox-data-root";
    if !opts.sysbox() {
        return Check::skip(name, format!("not used: the runtime is {}", opts.runtime));
    }
    let missing: Vec<&str> = ["rsync", "modprobe", "iptables"]
        .into_iter()
        .filter(|t| find_on_path(host, t).is_none())
        .collect();
    let magic = host.fs_magic(&host.path(DATA_ROOT)).ok();
    judge_mgr_needs(&missing, magic)
}

/// A tool sysbox-mgr runs: only PATH counts, the daemon inherits cvmd's.
fn find_on_path(host: &dyn Host, name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| host.path(d).join(name))
        .find(|p| p.is_file())
}

pub const DATA_ROOT: &str = "/var/lib/sysbox";

pub fn judge_mgr_needs(missing_tools: &[&str], magic: Option<i64>) -> Check {
    let name = "sysbox-data-root";
    let fs = magic.map(super::storage::fs_name);
    if let Some(bad @ ("overlayfs" | "tmpfs" | "nfs")) = fs {
        return Check::fail(
            name,
            format!("{DATA_ROOT} is on {bad}; sysbox-mgr needs ext4 or btrfs there"),
            format!("mount a disk-backed volume (hostPath or emptyDir) at {DATA_ROOT}"),
        );
    }
    if !missing_tools.is_empty() {
        return Check::fail(
            name,
            format!("sysbox-mgr needs {} on PATH", missing_tools.join(", ")),
            "install them in the outer image (apt-get install rsync kmod iptables)",
        );
    }
    Check::ok(
        name,
        format!(
            "{DATA_ROOT} on {}; rsync, modprobe, iptables present",
            fs.unwrap_or("an unknown file system")
        ),
    )
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
            format!("{binary} not found (looked on PATH and in {})", BIN_DIRS.join(", ")),
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
    fn sysbox_data_root_on_overlay_or_missing_tools_fail() {
        let c = judge_mgr_needs(&[], Some(0x794C_7630));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("on overlayfs"), "{c:?}");
        let c = judge_mgr_needs(&["rsync"], Some(0xEF53));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("needs rsync"), "{c:?}");
        assert_eq!(judge_mgr_needs(&[], Some(0xEF53)).status, Status::Ok);
    }

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
