//! The kernel calls of rootfs assembly behind one trait, so the sequencing
//! in `overlay` is tested with a recording implementation and no root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::CWD;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

/// One lower layer handed to overlayfs: a path, or an fd of a (detached)
/// mount, which overlayfs accepts for `lowerdir+` since Linux 6.13.
#[derive(Debug, Clone, Copy)]
pub enum Lower<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>),
}

/// A failed step of a multi-call sequence, with the kernel's message from
/// the fs context when it gave one.
#[derive(Debug)]
pub struct StepError {
    pub step: &'static str,
    pub error: io::Error,
    /// Kernel messages from the fs context, empty if none.
    pub log: String,
}

impl StepError {
    /// The error with the kernel's messages in its text (same kind).
    pub fn into_io(self) -> io::Error {
        if self.log.is_empty() {
            return self.error;
        }
        io::Error::new(self.error.kind(), format!("{} [{}]", self.error, self.log))
    }
}

pub trait MountOps {
    /// New mount API: fsopen("overlay"), one `lowerdir+` per layer (top
    /// first), upperdir, workdir, [`super::plan::OVERLAY_FLAGS`], create,
    /// fsmount, move_mount onto `target`.
    fn overlay_fsconfig(
        &self,
        lowers: &[Lower<'_>],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), StepError>;
    /// Classic mount(2) with `data`, resolved relative to `cwd`.
    fn overlay_classic(&self, cwd: &Path, data: &str, target: &Path) -> io::Result<()>;
    /// A detached clone of the mount at `path`, ID-mapped through `userns`.
    fn idmapped_tree(&self, path: &Path, userns: BorrowedFd<'_>) -> Result<OwnedFd, StepError>;
    /// Attaches a detached mount at `at`.
    fn attach(&self, tree: BorrowedFd<'_>, at: &Path) -> io::Result<()>;
    fn bind(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn unmount(&self, path: &Path, detach: bool) -> io::Result<()>;
}

/// The real kernel.
#[derive(Debug)]
pub struct Kernel;

/// `struct mount_attr` (include/uapi/linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn step(step: &'static str) -> impl Fn(rustix::io::Errno) -> StepError {
    move |e| StepError {
        step,
        error: e.into(),
        log: String::new(),
    }
}

/// Collects the messages overlayfs left in the fs context log (read(2) on
/// the fsopen fd, "e overlayfs: ..."), which say which option was wrong.
fn with_log(fs: BorrowedFd<'_>, mut err: StepError) -> StepError {
    let mut buf = [0u8; 512];
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        if !err.log.is_empty() {
            err.log.push_str("; ");
        }
        err.log.push_str(String::from_utf8_lossy(&buf[..n]).trim());
    }
    err
}

impl MountOps for Kernel {
    fn overlay_fsconfig(
        &self,
        lowers: &[Lower<'_>],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), StepError> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(step("fsopen"))?;
        let fsd = fs.as_fd();
        let configure = || -> Result<(), StepError> {
            for lower in lowers {
                match lower {
                    Lower::Path(p) => rustix::mount::fsconfig_set_string(fsd, "lowerdir+", *p),
                    Lower::Fd(fd) => rustix::mount::fsconfig_set_fd(fsd, "lowerdir+", *fd),
                }
                .map_err(step("lowerdir+"))?;
            }
            rustix::mount::fsconfig_set_string(fsd, "upperdir", upper).map_err(step("upperdir"))?;
            rustix::mount::fsconfig_set_string(fsd, "workdir", work).map_err(step("workdir"))?;
            for (k, v) in super::plan::OVERLAY_FLAGS {
                rustix::mount::fsconfig_set_string(fsd, k, v).map_err(step("option"))?;
            }
            rustix::mount::fsconfig_create(fsd).map_err(step("create"))
        };
        configure().map_err(|e| with_log(fsd, e))?;
        let mnt =
            rustix::mount::fsmount(fsd, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
                .map_err(step("fsmount"))?;
        rustix::mount::move_mount(
            mnt.as_fd(),
            "",
            CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(step("move_mount"))
    }

    fn overlay_classic(&self, cwd: &Path, data: &str, target: &Path) -> io::Result<()> {
        let (cwd, data, target) = (cwd.to_owned(), data.to_owned(), target.to_owned());
        // The short relative lowerdirs need the cwd at the workspace dir.
        // A thread that unshared CLONE_FS has its own cwd, so the process's
        // cwd (shared by every other thread) is never touched.
        std::thread::spawn(move || -> io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::unistd::chdir(&cwd)?;
            nix::mount::mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(data.as_str()),
            )?;
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("mount thread panicked"))?
    }

    fn idmapped_tree(&self, path: &Path, userns: BorrowedFd<'_>) -> Result<OwnedFd, StepError> {
        idmapped_clone(path, userns, false)
    }

    fn attach(&self, tree: BorrowedFd<'_>, at: &Path) -> io::Result<()> {
        rustix::mount::move_mount(tree, "", CWD, at, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .map_err(Into::into)
    }

    fn bind(&self, from: &Path, to: &Path) -> io::Result<()> {
        rustix::mount::mount_bind(from, to).map_err(Into::into)
    }

    fn unmount(&self, path: &Path, detach: bool) -> io::Result<()> {
        let flags = if detach {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        rustix::mount::unmount(path, flags | UnmountFlags::NOFOLLOW).map_err(Into::into)
    }
}

/// A detached clone of the mount at `path` (with the mounts below it when
/// `recursive`), ID-mapped through `userns`: open_tree(OPEN_TREE_CLONE)
/// then mount_setattr(MOUNT_ATTR_IDMAP), AT_RECURSIVE applying the mapping
/// to every mount of the clone.
pub fn idmapped_clone(
    path: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> Result<OwnedFd, StepError> {
    let tree = rustix::mount::open_tree(
        CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | if recursive {
                OpenTreeFlags::AT_RECURSIVE
            } else {
                OpenTreeFlags::empty()
            },
    )
    .map_err(step("open_tree"))?;
    let attr = MountAttr {
        attr_set: u64::from(MountAttrFlags::MOUNT_ATTR_IDMAP.bits()),
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::from(userns.as_raw_fd().cast_unsigned()),
    };
    let empty = CString::default();
    // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes from
    // `attr`, which lives across the call; `empty` is a valid C string
    // and both fds are open for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(StepError {
            step: "mount_setattr(MOUNT_ATTR_IDMAP)",
            error: io::Error::last_os_error(),
            log: String::new(),
        });
    }
    Ok(tree)
}

/// The `statfs` type of the file system holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    Ok(rustix::fs::statfs(path)?.f_type as i64)
}

/// Reads `/proc/self/mountinfo`.
pub fn read_mountinfo() -> io::Result<Vec<u8>> {
    std::fs::read("/proc/self/mountinfo")
}
