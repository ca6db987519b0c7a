//! Path resolution inside a rootfs, with the rootfs as `/`: the walk the
//! inner container's kernel will do, done from outside without ever
//! leaving the rootfs. Each component is looked up relative to a directory
//! fd with `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`; a symlink's target is read
//! with `readlinkat` and spliced into the remaining path (absolute targets
//! restart at the rootfs, `..` at the rootfs stays there, as
//! `openat2(RESOLVE_IN_ROOT)` does). At most [`MAX_LINKS`] links are
//! followed, the kernel's own limit (`MAXSYMLINKS`, path_resolution(7)).
//! A walk of our own rather than one `openat2(RESOLVE_IN_ROOT)` call (or
//! the pathrs crate over it): the kernel answers only "not found" or "too
//! many links", while a user whose `/sbin/init` is a dangling link needs
//! to read where it led (`/sbin/init -> /lib/systemd/systemd`, missing).
//! Each step is the same no-follow `openat`/`statat` the kernel's own
//! resolution does, so nothing here can leave the rootfs.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

pub const MAX_LINKS: usize = 40;

/// Where a path led: its resolved path inside the rootfs, the directory
/// holding it and its final name (for an `openat` with O_NOFOLLOW), and
/// what is there.
pub struct Found {
    pub path: PathBuf,
    pub parent: OwnedFd,
    pub name: CString,
    pub stat: Stat,
}

#[derive(Debug)]
pub enum Walk {
    /// Nothing at `at` (a dangling link or a missing component).
    Missing { at: PathBuf },
    /// A component before the end is not a directory.
    NotDir { at: PathBuf },
    /// More than [`MAX_LINKS`] links: a loop or an absurd chain.
    Loop { at: PathBuf },
}

pub enum Outcome {
    Found(Found),
    Failed(Walk),
}

/// Opens the rootfs as the walk's `/`.
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(root, flags, Mode::empty())?)
}

fn inner(parts: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(parts);
    p
}

/// Resolves `path` (taken as absolute inside the rootfs) following every
/// symlink, the final one included.
pub fn resolve(root: &OwnedFd, path: &Path) -> io::Result<Outcome> {
    let mut todo: VecDeque<OsString> = components(path);
    // dirs[i] is the directory fd of parts[..i]; dirs[0] is the rootfs.
    let mut dirs: Vec<OwnedFd> = vec![root.try_clone()?];
    let mut parts: Vec<OsString> = Vec::new();
    let mut links = 0usize;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if parts.pop().is_some() {
                dirs.pop();
            }
            continue;
        }
        let dir = dirs.last().expect("the rootfs fd stays");
        let cname = CString::new(name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let stat = match rustix::fs::statat(dir, &cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => {
                // The whole path that was sought, for the message.
                parts.push(name);
                parts.extend(todo);
                return Ok(Outcome::Failed(Walk::Missing { at: inner(&parts) }));
            }
            Err(Errno::NOTDIR) => return Ok(Outcome::Failed(Walk::NotDir { at: inner(&parts) })),
            Err(e) => return Err(e.into()),
        };
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Symlink {
            links += 1;
            parts.push(name);
            if links > MAX_LINKS {
                return Ok(Outcome::Failed(Walk::Loop { at: inner(&parts) }));
            }
            parts.pop();
            let target = rustix::fs::readlinkat(dir, &cname, Vec::new())?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            if target.is_absolute() {
                parts.clear();
                dirs.truncate(1);
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if todo.is_empty() {
            parts.push(name);
            let parent = dir.try_clone()?;
            return Ok(Outcome::Found(Found {
                path: inner(&parts),
                parent,
                name: cname,
                stat,
            }));
        }
        if kind != FileType::Directory {
            parts.push(name);
            return Ok(Outcome::Failed(Walk::NotDir { at: inner(&parts) }));
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let sub = rustix::fs::openat(dir.as_fd(), &cname, flags, Mode::empty())?;
        dirs.push(sub);
        parts.push(name);
    }
    // The path named the rootfs itself.
    let parent = root.try_clone()?;
    let stat = rustix::fs::fstat(root)?;
    Ok(Outcome::Found(Found {
        path: PathBuf::from("/"),
        parent,
        name: CString::new(".").expect("no NUL"),
        stat,
    }))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Reads a regular file inside the rootfs, following links only inside it,
/// refusing more than `limit` bytes. `Ok(None)` when it does not exist.
pub fn read_file(root: &Path, path: &Path, limit: u64) -> io::Result<Option<Result<Vec<u8>, u64>>> {
    use std::io::Read;
    let root = open_root(root)?;
    let found = match resolve(&root, path)? {
        Outcome::Found(f) => f,
        Outcome::Failed(_) => return Ok(None),
    };
    if FileType::from_raw_mode(found.stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(&found.parent, &found.name, flags, Mode::empty())?;
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Ok(Some(Err(limit)));
    }
    Ok(Some(Ok(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn walk(root: &Path, p: &str) -> Result<PathBuf, Walk> {
        let fd = open_root(root).unwrap();
        match resolve(&fd, Path::new(p)).unwrap() {
            Outcome::Found(f) => Ok(f.path),
            Outcome::Failed(w) => Err(w),
        }
    }

    #[test]
    fn follows_links_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/lib/x")).unwrap();
        std::fs::write(r.join("usr/lib/x/f"), b"").unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("../lib/x/f", r.join("usr/rel")).unwrap();
        symlink("/lib/x/f", r.join("abs")).unwrap();
        symlink("../../../../../lib/x/f", r.join("usr/lib/up")).unwrap();
        assert_eq!(walk(r, "/lib/x/f").unwrap(), Path::new("/usr/lib/x/f"));
        assert_eq!(walk(r, "/usr/rel").unwrap(), Path::new("/usr/lib/x/f"));
        assert_eq!(walk(r, "abs").unwrap(), Path::new("/usr/lib/x/f"));
        // `..` above the rootfs stays at the rootfs, as in the container.
        assert_eq!(walk(r, "/usr/lib/up").unwrap(), Path::new("/usr/lib/x/f"));
        assert_eq!(walk(r, "/../..").unwrap(), Path::new("/"));
    }

    #[test]
    fn never_leaves_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        std::fs::create_dir(&r).unwrap();
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        symlink("/etc/passwd", r.join("host")).unwrap();
        symlink("../outside", r.join("up")).unwrap();
        assert!(matches!(walk(&r, "/host"), Err(Walk::Missing { .. })));
        assert!(
            matches!(walk(&r, "/up"), Err(Walk::Missing { at }) if at == Path::new("/outside"))
        );
        assert!(read_file(&r, Path::new("/up"), 100).unwrap().is_none());
    }

    #[test]
    fn loops_and_non_dirs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        symlink("self", r.join("self")).unwrap();
        std::fs::write(r.join("file"), b"").unwrap();
        assert!(matches!(walk(r, "/a"), Err(Walk::Loop { .. })));
        assert!(matches!(walk(r, "/self/x"), Err(Walk::Loop { .. })));
        assert!(matches!(walk(r, "/file/x"), Err(Walk::NotDir { .. })));
    }

    #[test]
    fn a_chain_of_forty_resolves_and_forty_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::write(r.join("l0"), b"").unwrap();
        for i in 1..=41 {
            symlink(format!("l{}", i - 1), r.join(format!("l{i}"))).unwrap();
        }
        assert_eq!(walk(r, "/l40").unwrap(), Path::new("/l0"));
        assert!(matches!(walk(r, "/l41"), Err(Walk::Loop { .. })));
    }

    #[test]
    fn read_file_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"12345").unwrap();
        assert_eq!(
            read_file(t.path(), Path::new("/f"), 5).unwrap(),
            Some(Ok(b"12345".to_vec()))
        );
        assert_eq!(
            read_file(t.path(), Path::new("/f"), 4).unwrap(),
            Some(Err(4))
        );
    }
}
