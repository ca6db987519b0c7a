//! Probes for what the host can do, for `cvmd preflight`: the same kernel
//! calls rootfs assembly makes, on a scratch dir, undone before returning.

use std::os::fd::AsFd;
use std::path::Path;

use super::sys::{Kernel, MountOps, StepError};
use super::IdMap;

/// Any valid mapping serves: the probe asks whether the file system takes
/// an ID mapping at all, and writes nothing through it.
const PROBE_MAP: IdMap = IdMap {
    host_uid: 100_000,
    host_gid: 100_000,
    size: 65536,
};

fn io_step(step: &'static str) -> impl Fn(std::io::Error) -> StepError {
    move |error| StepError {
        step,
        error,
        log: String::new(),
    }
}

/// open_tree + mount_setattr(MOUNT_ATTR_IDMAP) of `dir/lower`; the detached
/// mount is never attached and goes away with its fd.
pub fn idmapped_mount(dir: &Path) -> Result<(), StepError> {
    idmapped_mount_with(&Kernel, dir)
}

pub fn idmapped_mount_with(ops: &dyn MountOps, dir: &Path) -> Result<(), StepError> {
    let lower = dir.join("lower");
    std::fs::create_dir_all(&lower).map_err(io_step("create the probe dir"))?;
    let ns = super::userns::userns_fd(&PROBE_MAP).map_err(io_step("user namespace"))?;
    ops.idmapped_tree(&lower, ns.as_fd()).map(drop)
}

/// An overlay whose lower layer is an ID-mapped mount (overlayfs accepts
/// those from Linux 5.19). The ID-mapped lower is attached at `dir/l` so
/// that the classic mount(2) works on every kernel that could pass; both
/// mounts are undone before returning, whatever failed.
pub fn overlay_on_idmapped(dir: &Path) -> Result<(), StepError> {
    overlay_on_idmapped_with(&Kernel, dir)
}

pub fn overlay_on_idmapped_with(ops: &dyn MountOps, dir: &Path) -> Result<(), StepError> {
    for sub in ["lower", "l", "u", "w", "m"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io_step("create the probe dir"))?;
    }
    let ns = super::userns::userns_fd(&PROBE_MAP).map_err(io_step("user namespace"))?;
    let tree = ops.idmapped_tree(&dir.join("lower"), ns.as_fd())?;
    ops.attach(tree.as_fd(), &dir.join("l"))
        .map_err(io_step("attach the ID-mapped lower"))?;
    // Relative names with the cwd at `dir`: the cache path may hold ',' or
    // ':' which the option string cannot carry.
    let mounted = ops
        .overlay_classic(dir, "lowerdir=l,upperdir=u,workdir=w", &dir.join("m"))
        .map_err(io_step("mount overlay"));
    if mounted.is_ok() {
        let _ = ops.unmount(&dir.join("m"), true);
    }
    let _ = ops.unmount(&dir.join("l"), true);
    mounted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idmapped_probe_works_here_as_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: the ID-mapped mount probe needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        match idmapped_mount(dir.path()) {
            Ok(()) => {}
            Err(e) if e.error.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("skipping: this kernel or fs lacks ID-mapped mounts")
            }
            Err(e) => panic!("{}: {}", e.step, e.error),
        }
    }

    #[test]
    fn overlay_probe_leaves_no_mount() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: the overlay probe needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let result = overlay_on_idmapped(dir.path());
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let new_kernel = crate::version::Version::parse(&release)
            .is_some_and(|v| v >= crate::version::Version(5, 19, 0));
        if new_kernel && idmapped_mount(dir.path()).is_ok() {
            if let Err(e) = result {
                panic!(
                    "overlay on an ID-mapped lower fails on {release}: {}: {}",
                    e.step, e.error
                );
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(dir.path().to_str().unwrap()), "{info}");
    }
}
