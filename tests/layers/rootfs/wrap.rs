//! The real kernel with features switched off, to drive the fallbacks.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use cvmd::rootfs::{Kernel, Lower, MountOps, StepError};

#[derive(Default)]
pub struct Wrapped {
    /// ID-mapped mounts "unsupported" (EINVAL from mount_setattr).
    pub no_idmap: bool,
    /// `lowerdir+` by fd refused, as before Linux 6.13.
    pub refuse_fd_lowers: bool,
    /// `lowerdir+` refused altogether, as before Linux 6.8.
    pub refuse_lowerdir_plus: bool,
}

fn einval(step: &'static str) -> StepError {
    StepError {
        step,
        error: io::Error::from_raw_os_error(libc::EINVAL),
        log: String::new(),
    }
}

impl MountOps for Wrapped {
    fn overlay_fsconfig(
        &self,
        l: &[Lower<'_>],
        u: &Path,
        w: &Path,
        t: &Path,
    ) -> Result<(), StepError> {
        let fds = l.iter().any(|x| matches!(x, Lower::Fd(_)));
        if self.refuse_lowerdir_plus || (fds && self.refuse_fd_lowers) {
            return Err(einval("lowerdir+"));
        }
        Kernel.overlay_fsconfig(l, u, w, t)
    }
    fn overlay_classic(&self, cwd: &Path, data: &str, t: &Path) -> io::Result<()> {
        Kernel.overlay_classic(cwd, data, t)
    }
    fn idmapped_tree(&self, p: &Path, ns: BorrowedFd<'_>) -> Result<OwnedFd, StepError> {
        if self.no_idmap {
            return Err(einval("mount_setattr(MOUNT_ATTR_IDMAP)"));
        }
        Kernel.idmapped_tree(p, ns)
    }
    fn attach(&self, tree: BorrowedFd<'_>, at: &Path) -> io::Result<()> {
        Kernel.attach(tree, at)
    }
    fn bind(&self, from: &Path, to: &Path) -> io::Result<()> {
        Kernel.bind(from, to)
    }
    fn unmount(&self, path: &Path, detach: bool) -> io::Result<()> {
        Kernel.unmount(path, detach)
    }
}
