//! Flat mode: the merged view of the layers, materialised by copying them
//! bottom to top and applying overlayfs' rules as each layer lands.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps, Uid};

use super::{fsx, idshift, IdMap, RootfsError};

/// What a layer entry is, as far as merging goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// A 0:0 character device: hides the name in lower layers.
    Whiteout,
    Dir {
        opaque: bool,
    },
    Other,
}

/// What to do with one layer entry given what lower layers left at its name
/// (`existing`: `None` absent, `Some(true)` a directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Remove,
    MakeDir,
    /// Keep the lower directory and merge into it; `clear` for an opaque one.
    MergeDir {
        clear: bool,
    },
    /// Remove the lower entry (any type), then create this one.
    Replace {
        dir: bool,
    },
    Create,
}

/// Overlayfs' merge rules (Documentation/filesystems/overlayfs.rst): a
/// whiteout hides the name; a directory over a directory merges unless it is
/// opaque; anything else over anything hides what is below.
pub fn plan(src: Src, existing: Option<bool>) -> Step {
    match (src, existing) {
        (Src::Whiteout, None) => Step::Nothing,
        (Src::Whiteout, Some(_)) => Step::Remove,
        (Src::Dir { .. }, None) => Step::MakeDir,
        (Src::Dir { opaque }, Some(true)) => Step::MergeDir { clear: opaque },
        (Src::Dir { .. }, Some(false)) => Step::Replace { dir: true },
        (Src::Other, None) => Step::Create,
        (Src::Other, Some(_)) => Step::Replace { dir: false },
    }
}

/// What a copy did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub reflinked: bool,
}

struct Copier<'a> {
    shift: Option<&'a IdMap>,
    reflink: bool,
    stats: Stats,
    /// (dev, ino) of a multiply-linked source inode of the current layer ->
    /// its first copy, relative to the destination root. Hardlinks never
    /// span layers (each layer dir is its own tree), as in the overlay.
    links: HashMap<(u64, u64), PathBuf>,
    root: OwnedFd,
    layer: PathBuf,
}

/// Copies `layers` (bottom to top) into the new directory `dest`.
pub fn build(layers: &[PathBuf], dest: &Path, shift: Option<&IdMap>) -> Result<Stats, RootfsError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| RootfsError::Copy { path, source }
    };
    std::fs::create_dir(dest).map_err(err(dest))?;
    let root = fsx::open_dir(rustix::fs::CWD, &cstring(dest)).map_err(err(dest))?;
    let mut c = Copier {
        shift,
        reflink: true,
        stats: Stats::default(),
        links: HashMap::new(),
        root,
        layer: PathBuf::new(),
    };
    for layer in layers {
        c.layer.clone_from(layer);
        c.links.clear();
        let src = fsx::open_dir(rustix::fs::CWD, &cstring(layer)).map_err(err(layer))?;
        let dst = c.root.try_clone().map_err(err(dest))?;
        // The layer root is merged into the destination root: overlayfs
        // ignores opacity on a layer's root and shows the top root's
        // attributes.
        let st = rustix::fs::fstat(&src).map_err(|e| err(layer)(e.into()))?;
        c.merge(src.as_fd(), dst.as_fd(), Path::new(""))
            .map_err(|(p, e)| err(&layer.join(p))(e))?;
        c.meta_root(&src, &dst, &st).map_err(err(layer))?;
    }
    c.stats.reflinked = c.reflink && c.stats.bytes > 0;
    Ok(c.stats)
}

fn cstring(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

type StepResult = Result<(), (PathBuf, std::io::Error)>;

/// Attaches the entry's path (relative to the layer) to an io error.
trait At<T> {
    fn at(self, rel: &Path) -> Result<T, (PathBuf, std::io::Error)>;
}

impl<T, E: Into<std::io::Error>> At<T> for Result<T, E> {
    fn at(self, rel: &Path) -> Result<T, (PathBuf, std::io::Error)> {
        self.map_err(|e| (rel.to_owned(), e.into()))
    }
}

impl Copier<'_> {
    fn merge(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path) -> StepResult {
        use std::os::unix::ffi::OsStrExt;
        for name in fsx::names(src).at(rel)? {
            let child = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            self.entry(src, dst, &name, &child)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
    ) -> StepResult {
        let st = fsx::stat_at(src, name)
            .at(rel)?
            .ok_or(std::io::ErrorKind::NotFound)
            .at(rel)?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let kind = match ft {
            FileType::CharacterDevice if st.st_rdev == 0 => Src::Whiteout,
            FileType::Directory => Src::Dir {
                opaque: fsx::is_opaque(src, name).at(rel)?,
            },
            _ => Src::Other,
        };
        let existing = fsx::stat_at(dst, name)
            .at(rel)?
            .map(|d| FileType::from_raw_mode(d.st_mode) == FileType::Directory);
        self.stats.entries += 1;
        match plan(kind, existing) {
            Step::Nothing => Ok(()),
            Step::Remove => fsx::remove_all(dst, name).at(rel),
            Step::MakeDir => self.dir(src, dst, name, &st, rel, false),
            Step::MergeDir { clear } => {
                if clear {
                    fsx::clear_dir(fsx::open_dir(dst, name).at(rel)?.as_fd()).at(rel)?;
                }
                self.dir(src, dst, name, &st, rel, true)
            }
            Step::Replace { dir } => {
                fsx::remove_all(dst, name).at(rel)?;
                if dir {
                    self.dir(src, dst, name, &st, rel, false)
                } else {
                    self.leaf(src, dst, name, &st, ft, rel).at(rel)
                }
            }
            Step::Create => self.leaf(src, dst, name, &st, ft, rel).at(rel),
        }
    }

    fn dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
        existed: bool,
    ) -> StepResult {
        if !existed {
            rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700)).at(rel)?;
        }
        self.owner_xattrs(src, dst, name, st, existed).at(rel)?;
        let s = fsx::open_dir(src, name).at(rel)?;
        let d = fsx::open_dir(dst, name).at(rel)?;
        self.merge(s.as_fd(), d.as_fd(), rel)?;
        // Mode and times last: the children written above changed the mtime.
        rustix::fs::fchmod(&d, Mode::from_raw_mode(st.st_mode & 0o7777)).at(rel)?;
        rustix::fs::futimens(&d, &times(st)).at(rel)
    }

    fn leaf(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        ft: FileType,
        rel: &Path,
    ) -> std::io::Result<()> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                return Ok(rustix::fs::linkat(
                    &self.root,
                    first.as_path(),
                    dst,
                    name,
                    AtFlags::empty(),
                )?);
            }
            self.links.insert(key, rel.to_owned());
        }
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match ft {
            FileType::RegularFile => {
                let s = rustix::fs::openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let d = rustix::fs::openat(dst, name, flags, Mode::from_raw_mode(0o600))?;
                fsx::copy_content(&s, &d, st.st_size.cast_unsigned(), &mut self.reflink)?;
                self.stats.bytes += st.st_size.cast_unsigned();
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), dst, name)?;
            }
            _ => rustix::fs::mknodat(dst, name, ft, Mode::from_raw_mode(0o600), st.st_rdev)?,
        }
        self.owner_xattrs(src, dst, name, st, false)?;
        if ft != FileType::Symlink {
            // The name was created above by this single pass, so it is no
            // symlink; chmod does not follow one anyway for these types.
            rustix::fs::chmodat(dst, name, mode, AtFlags::empty())?;
        }
        Ok(rustix::fs::utimensat(
            dst,
            name,
            &times(st),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Owner first: chown(2) drops setuid/setgid and `security.capability`,
    /// so mode and xattrs come after it.
    fn owner_xattrs(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        existed: bool,
    ) -> std::io::Result<()> {
        let (uid, gid) = match self.shift {
            Some(m) => (
                idshift::shift_uid(m, st.st_uid),
                idshift::shift_gid(m, st.st_gid),
            ),
            None => (st.st_uid, st.st_gid),
        };
        rustix::fs::chownat(
            dst,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        let mut want = fsx::xattrs(src, name)?;
        if let Some(m) = self.shift {
            for (k, v) in &mut want {
                match idshift::shift_xattr(m, k, v) {
                    Ok(Some(new)) => *v = new,
                    Ok(None) => {}
                    Err(idshift::Malformed(why)) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}: {why}", String::from_utf8_lossy(k)),
                        ));
                    }
                }
            }
        }
        fsx::set_xattrs(dst, name, &want, existed)
    }

    fn meta_root(&self, src: &OwnedFd, dst: &OwnedFd, st: &Stat) -> std::io::Result<()> {
        self.owner_xattrs(src.as_fd(), dst.as_fd(), c".", st, true)?;
        rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
        Ok(rustix::fs::futimens(dst, &times(st))?)
    }
}

fn times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec.cast_signed(),
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec.cast_signed(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_remove_only_what_exists() {
        assert_eq!(plan(Src::Whiteout, None), Step::Nothing);
        assert_eq!(plan(Src::Whiteout, Some(true)), Step::Remove);
        assert_eq!(plan(Src::Whiteout, Some(false)), Step::Remove);
    }

    #[test]
    fn dirs_merge_unless_opaque_and_replace_non_dirs() {
        assert_eq!(
            plan(Src::Dir { opaque: false }, Some(true)),
            Step::MergeDir { clear: false }
        );
        assert_eq!(
            plan(Src::Dir { opaque: true }, Some(true)),
            Step::MergeDir { clear: true }
        );
        assert_eq!(plan(Src::Dir { opaque: true }, None), Step::MakeDir);
        assert_eq!(
            plan(Src::Dir { opaque: false }, Some(false)),
            Step::Replace { dir: true }
        );
    }

    #[test]
    fn files_hide_whatever_is_below() {
        assert_eq!(plan(Src::Other, None), Step::Create);
        assert_eq!(plan(Src::Other, Some(true)), Step::Replace { dir: false });
        assert_eq!(plan(Src::Other, Some(false)), Step::Replace { dir: false });
    }
}
