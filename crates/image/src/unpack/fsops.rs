//! The few syscalls of the unpack stage, all relative to an fd of the layer
//! root so that no path string is ever resolved from `/`.
//!
//! Parents are resolved by the kernel with openat2(2) `RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS`: symlinks written earlier in the layer are followed
//! only while they stay beneath the root; an absolute symlink, or a `..` that
//! climbs above the root, fails with EXDEV instead of being followed out.
//! Final components are never followed (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW,
//! O_EXCL, or syscalls that do not follow: mkdirat, mknodat, symlinkat,
//! linkat without AT_SYMLINK_FOLLOW, unlinkat).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::bounds;
use super::path::join;
use super::sparse::Holey;

/// Why a directory beneath the root could not be opened.
#[derive(Debug)]
pub(super) enum ResolveError {
    /// A symlink or `..` on the way leads outside the root.
    Outside,
    /// ELOOP: a symlink cycle, or more than 40 links.
    Loop,
    /// A component is not a directory, or is a dangling symlink.
    NotDir,
    /// A component does not exist (only from [`Root::open_dir`]).
    Missing,
    Io(io::Error),
}

impl From<Errno> for ResolveError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::XDEV => Self::Outside,
            Errno::LOOP => Self::Loop,
            Errno::NOTDIR => Self::NotDir,
            Errno::NOENT => Self::Missing,
            other => Self::Io(other.into()),
        }
    }
}

pub(super) struct Root {
    fd: OwnedFd,
}

impl Root {
    pub(super) fn open(dest: &Path) -> io::Result<Self> {
        // `dest` itself is the caller's own temp dir; following it is fine.
        let fd = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }

    /// Opens an existing directory beneath the root as an O_PATH fd.
    pub(super) fn open_dir(&self, comps: &[Vec<u8>]) -> Result<OwnedFd, ResolveError> {
        self.open_beneath(&join(comps))
    }

    /// Like [`Self::open_dir`], creating missing directories with mode 0755
    /// (tar layers may omit parents; docker and containerd create them).
    pub(super) fn open_dir_create(&self, comps: &[Vec<u8>]) -> Result<OwnedFd, ResolveError> {
        match self.open_dir(comps) {
            Err(ResolveError::Missing) => {}
            other => return other,
        }
        let mut current = self.open_beneath(b".")?;
        for i in 0..comps.len() {
            // Every prefix is resolved again from the root rather than from
            // `current`: a symlink inside the layer may point to a sibling
            // (`a/l -> ../b`), which a walk confined beneath `current`
            // would wrongly refuse.
            let prefix = join(&comps[..=i]);
            current = match self.open_beneath(&prefix) {
                Err(ResolveError::Missing) => {
                    let name = OsStr::from_bytes(&comps[i]);
                    match rustix::fs::mkdirat(&current, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {
                            // mkdirat honours the umask; the layer wants 0755.
                            let made = open_dir_nofollow(current.as_fd(), name)
                                .map_err(ResolveError::Io)?;
                            rustix::fs::fchmod(&made, Mode::from_raw_mode(0o755))
                                .map_err(|e| ResolveError::Io(e.into()))?;
                        }
                        // A dangling symlink: its reopen below reports it.
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(ResolveError::Io(e.into())),
                    }
                    match self.open_beneath(&prefix) {
                        Err(ResolveError::Missing) => return Err(ResolveError::NotDir),
                        other => other?,
                    }
                }
                other => other?,
            };
        }
        Ok(current)
    }

    fn open_beneath(&self, rel: &[u8]) -> Result<OwnedFd, ResolveError> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN means a concurrent rename raced the lookup (openat2(2)); the
        // dir is private to us, so a few retries are plenty.
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                OsStr::from_bytes(rel),
                flags,
                Mode::empty(),
                resolve,
            ) {
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                res => return res.map_err(ResolveError::from),
            }
        }
    }
}

/// What was at a name before an entry took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Empty,
    /// A directory kept for a directory entry (dir over dir).
    KeptDir,
    /// An overlay whiteout (0:0 char device) from earlier in this layer was
    /// removed; a directory replacing it must become opaque.
    ReplacedWhiteout,
}

/// Makes `name` in `dir` free for a new entry, except that an existing
/// directory is kept when `want_dir`. Later entries win, as in docker.
pub(super) fn clear_slot(dir: BorrowedFd<'_>, name: &OsStr, want_dir: bool) -> io::Result<Slot> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Slot::Empty),
        Err(e) => return Err(e.into()),
    };
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind == FileType::Directory {
        if want_dir {
            return Ok(Slot::KeptDir);
        }
        remove_all(dir, name)?;
        return Ok(Slot::Empty);
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    if kind == FileType::CharacterDevice && st.st_rdev == 0 {
        return Ok(Slot::ReplacedWhiteout);
    }
    Ok(Slot::Empty)
}

/// What a whiteout finds at its name.
pub(super) enum Existing {
    Nothing,
    Dir,
    Other,
}

pub(super) fn existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Existing> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(Existing::Dir),
        Ok(_) => Ok(Existing::Other),
        Err(Errno::NOENT) => Ok(Existing::Nothing),
        Err(e) => Err(e.into()),
    }
}

/// Removes a tree without following symlinks: each directory is opened
/// O_NOFOLLOW relative to its parent fd.
fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let mut children = Vec::new();
    for ent in rustix::fs::Dir::read_from(&sub)? {
        let ent = ent?;
        let child = ent.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push((child.to_vec(), ent.file_type()));
        }
    }
    for (child, kind) in children {
        let child = OsStr::from_bytes(&child);
        let is_dir = match kind {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(&sub, child, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            remove_all(sub.as_fd(), child)?;
        } else {
            rustix::fs::unlinkat(&sub, child, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(Into::into)
}

/// Identity of a directory, to find it again in the final pass.
pub(super) fn dir_identity(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok((st.st_dev, st.st_ino))
}

/// Opens a directory for fd-based chmod/utimens; fails on a symlink, so a
/// name re-used by a later symlink entry is never followed. (Inode numbers
/// alone do not prove that: ext4 hands a freed dir's inode to the symlink
/// that replaced it.)
pub(super) fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::empty(),
    )?))
}

/// Identity and permission bits (with setuid, setgid, sticky) of an open file.
pub(super) fn identity(file: &File) -> io::Result<((u64, u64), u32)> {
    let st = rustix::fs::fstat(file)?;
    Ok(((st.st_dev, st.st_ino), st.st_mode & 0o7777))
}

/// What an object created beneath the root gets without being asked, so the
/// calls that would set just that can be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Defaults {
    /// The creating process's (uid, gid); None when the root is setgid
    /// (new objects then take its group, and subdirectories its setgid).
    pub owner: Option<(u32, u32)>,
    /// The umask that `openat`'s mode goes through; None when not known, or
    /// when a default ACL on the root decides the mode instead (acl(5)).
    pub umask: Option<u32>,
}

pub(super) fn creation_defaults(root: &File) -> Defaults {
    let setgid = rustix::fs::fstat(root).map_or(true, |st| st.st_mode & 0o2000 != 0);
    let owner = (!setgid).then(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    });
    let acl = !matches!(
        rustix::fs::fgetxattr(root, "system.posix_acl_default", &mut [0u8; 0]),
        Err(Errno::NODATA | Errno::OPNOTSUPP)
    );
    let umask = if acl { None } else { read_umask() };
    Defaults { owner, umask }
}

/// The process's umask from /proc (proc(5) `Umask`, Linux 4.7): reading it
/// with umask(2) would set it, racing the daemon's other threads.
fn read_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

pub(super) fn mkdir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
}

/// Opens a directory for fd-based calls (fsetxattr) without following.
pub(super) fn open_child_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(Into::into)
}

pub(super) fn symlink(target: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)
}

pub(super) fn hardlink(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> rustix::io::Result<()> {
    // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, not followed.
    rustix::fs::linkat(from_dir, from, dir, name, AtFlags::empty())
}

pub(super) fn mknod(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind: FileType,
    major: u32,
    minor: u32,
) -> rustix::io::Result<()> {
    let dev = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), dev)
}

/// Why a regular file could not be written.
pub(super) enum WriteError {
    Create(io::Error),
    /// Reading the tar stream failed.
    Read(io::Error),
    Write(io::Error),
    /// The content went past its declared size.
    TooLarge,
    /// `check` refused to go on (a free-space reserve).
    Stopped,
}

/// Creates `name` (O_EXCL|O_NOFOLLOW, with the permission bits of `mode`
/// only: setuid, setgid and sticky wait for the final chmod, so they never
/// show on a half-written file) and copies `src` into it
/// through `buf`, seeking over holes, failing once more than `size` bytes
/// arrive. Every [`bounds::RECHECK_EVERY`] bytes written, `check` is asked
/// (with the bytes still to come) whether to go on.
pub(super) fn write_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    src: &mut dyn Holey,
    size: u64,
    buf: &mut [u8],
    check: &mut dyn FnMut(&File, u64) -> bool,
) -> Result<(File, u64), WriteError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode & 0o777))
        .map_err(|e| WriteError::Create(e.into()))?;
    let mut file = File::from(fd);
    let mut written: u64 = 0;
    let mut since_check: u64 = 0;
    let mut holes = false;
    loop {
        let hole = src.take_hole();
        if hole > 0 {
            written = written.checked_add(hole).ok_or(WriteError::TooLarge)?;
            if written > size {
                return Err(WriteError::TooLarge);
            }
            let step = i64::try_from(hole).map_err(|_| WriteError::TooLarge)?;
            file.seek(io::SeekFrom::Current(step))
                .map_err(WriteError::Write)?;
            holes = true;
            continue;
        }
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WriteError::Read(e)),
        };
        written += n as u64;
        if written > size {
            return Err(WriteError::TooLarge);
        }
        file.write_all(&buf[..n]).map_err(WriteError::Write)?;
        since_check += n as u64;
        if since_check >= bounds::RECHECK_EVERY {
            since_check = 0;
            let left = src.data_left().unwrap_or(size - written);
            if !check(&file, left) {
                return Err(WriteError::Stopped);
            }
        }
    }
    if holes {
        // A trailing hole: seeking alone does not make the file longer.
        file.set_len(written).map_err(WriteError::Write)?;
    }
    Ok((file, written))
}
