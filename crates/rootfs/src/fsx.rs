//! File system steps of the flat copy, all relative to directory fds and
//! never following a final symlink (`*at` calls with AT_SYMLINK_NOFOLLOW,
//! O_NOFOLLOW, or `l*xattr` on `/proc/self/fd/DIR/NAME`, where the magic
//! link pins the directory and only NAME is looked up, without following).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;

/// Overlayfs' private xattrs: they describe the layer's overlay form
/// (opaque, whiteout, redirect), not the file, and are not copied.
const OVERLAY_XATTR: &[u8] = b"trusted.overlay.";

pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Names in a directory, without `.` and `..`, sorted for a stable order.
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut out = Vec::new();
    let mut it = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = it.read() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `name` and, for a directory, everything beneath it.
pub fn remove_all(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = open_dir(dir, name)?;
    clear_dir(sub.as_fd())?;
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Removes everything inside a directory.
pub fn clear_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    for name in names(dir)? {
        remove_all(dir, &name)?;
    }
    Ok(())
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name.to_bytes()));
    p
}

/// Xattrs of `name`, without overlayfs' own.
pub fn xattrs(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = proc_path(dir, name);
    let size = rustix::fs::llistxattr_query(&path)?;
    let mut list = vec![0u8; size];
    let n = rustix::fs::llistxattr(&path, &mut list[..])?;
    let mut out = Vec::new();
    for key in list[..n].split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if key.starts_with(OVERLAY_XATTR) {
            continue;
        }
        let key_os = OsStr::from_bytes(key);
        let len = rustix::fs::lgetxattr_query(&path, key_os)?;
        let mut value = vec![0u8; len];
        let got = rustix::fs::lgetxattr(&path, key_os, &mut value[..])?;
        value.truncate(got);
        out.push((key.to_vec(), value));
    }
    Ok(out)
}

/// Whether a directory in a layer is opaque (hides lower content).
pub fn is_opaque(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    let mut v = [0u8; 4];
    match rustix::fs::lgetxattr(proc_path(dir, name), "trusted.overlay.opaque", &mut v[..]) {
        Ok(n) => Ok(&v[..n] == b"y"),
        Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::RANGE) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Makes `name`'s xattrs exactly `want` (an existing directory that a higher
/// layer redefines shows that layer's xattrs only, as in the overlay).
/// Xattrs the destination fs refuses on policy are skipped with a warning.
pub fn set_xattrs(
    dir: BorrowedFd<'_>,
    name: &CStr,
    want: &[(Vec<u8>, Vec<u8>)],
    existed: bool,
) -> io::Result<()> {
    let path = proc_path(dir, name);
    if existed {
        for (key, _) in xattrs(dir, name)? {
            if !want.iter().any(|(k, _)| *k == key) {
                rustix::fs::lremovexattr(&path, OsStr::from_bytes(&key))?;
            }
        }
    }
    for (key, value) in want {
        match rustix::fs::lsetxattr(&path, OsStr::from_bytes(key), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e @ (Errno::NOTSUP | Errno::PERM)) if !key.starts_with(b"system.") => {
                tracing::warn!(path = ?path, xattr = %String::from_utf8_lossy(key), error = %e,
                    "flat copy: xattr refused by the destination, skipped");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies a regular file's content: a reflink (FICLONE) when `reflink` is
/// still believed to work, else copy_file_range, else read/write.
/// `reflink` is cleared on the first refusal so later files skip the try.
pub fn copy_content(src: &OwnedFd, dst: &OwnedFd, size: u64, reflink: &mut bool) -> io::Result<()> {
    if *reflink {
        match rustix::fs::ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(()),
            Err(_) => *reflink = false,
        }
    }
    let mut left = size;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return fallback_copy(src, dst);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn fallback_copy(src: &OwnedFd, dst: &OwnedFd) -> io::Result<()> {
    let mut r = std::fs::File::from(src.try_clone()?);
    let mut w = std::fs::File::from(dst.try_clone()?);
    io::copy(&mut r, &mut w).map(|_| ())
}
