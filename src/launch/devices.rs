//! Device nodes (`CVMD_ADD_TUN`, `CVMD_ADD_FUSE`, `CVMD_ADD_GPU`) for a
//! runc workspace in a user namespace. runc cannot mknod there, so it
//! bind-mounts the outer container's own node, whose owner (the node's
//! root) is nobody inside and whose mode is the node's (often 0600): the
//! workspace's root could not open it. cvmd makes the workspace its own
//! nodes instead, with the device's mode and owned by its mapped root, on
//! a small tmpfs of its own (the state dir may be mounted `nodev`), and
//! the bundle binds them in (`bundle::BundleInput::device_dir`). The
//! devices cgroup still allows only these devices.

use std::path::{Path, PathBuf};

use crate::bundle::{device_node_name, Device};
use crate::rootfs::IdMap;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot mount the tmpfs for the workspace's device nodes at {path:?}: {source}; cvmd needs CAP_SYS_ADMIN in the outer container (run it privileged)")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the workspace's device node {path:?} ({major}:{minor}): {source}; cvmd needs CAP_MKNOD and CAP_CHOWN in the outer container (run it privileged)")]
    Node {
        path: PathBuf,
        major: i64,
        minor: i64,
        source: std::io::Error,
    },
}

/// Makes one node per device under `dir` (a fresh tmpfs), owned by the
/// mapped root of `map`, with each device's mode.
pub fn stage(devices: &[Device], map: &IdMap, dir: &Path) -> Result<(), DeviceError> {
    teardown(dir);
    let mount_err = |source: std::io::Error| DeviceError::Mount {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(mount_err)?;
    // nosuid, noexec, but not nodev: the nodes are the point.
    rustix::mount::mount(
        "cvmd-devices",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NOEXEC,
        c"mode=0755,size=64k",
    )
    .map_err(|e| mount_err(e.into()))?;
    for d in devices {
        let path = dir.join(device_node_name(&d.path));
        let node_err = |source: std::io::Error| DeviceError::Node {
            path: path.clone(),
            major: d.major,
            minor: d.minor,
            source,
        };
        let number = |n: i64| {
            u32::try_from(n)
                .map_err(|_| node_err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))
        };
        let dev = rustix::fs::makedev(number(d.major)?, number(d.minor)?);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(d.mode & 0o777),
            dev,
        )
        .map_err(|e| node_err(e.into()))?;
        // mknod's mode passed through the umask: set it as asked.
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(d.mode & 0o777),
        )
        .map_err(node_err)?;
        std::os::unix::fs::chown(&path, Some(map.host_uid), Some(map.host_gid))
            .map_err(node_err)?;
    }
    tracing::info!(devices = devices.len(), dir = %dir.display(), "device nodes made for the workspace's user namespace");
    Ok(())
}

/// Unmounts and removes what [`stage`] made; a no-op when nothing is there.
pub fn teardown(dir: &Path) {
    let _ = rustix::mount::unmount(
        dir,
        rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn nodes_are_the_workspaces_own_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to mount a tmpfs and mknod");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("devices");
        let map = IdMap {
            host_uid: 300_000,
            host_gid: 300_000,
            size: 65536,
        };
        stage(&[Device::tun(), Device::fuse()], &map, &dir).unwrap();
        let meta =
            std::fs::metadata(dir.join(device_node_name(Path::new("/dev/net/tun")))).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!((meta.uid(), meta.gid()), (300_000, 300_000));
        assert_eq!(meta.mode() & 0o777, 0o666);
        assert_eq!(meta.rdev(), rustix::fs::makedev(10, 200));
        teardown(&dir);
        assert!(!dir.exists());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(dir.to_str().unwrap()), "tmpfs left mounted");
    }
}
