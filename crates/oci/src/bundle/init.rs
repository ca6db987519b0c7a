//! Does the image boot an init? `/sbin/init` counts when, resolved inside
//! the rootfs (links followed as the inner kernel will, never out of it),
//! it is an existing regular file with an execute bit. The verdict carries
//! the reason for the log line.

use std::fmt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::inroot::{self, Outcome, Walk};
use super::BundleError;

/// The literal path sysbox recognises systemd by (docs/ARCHITECTURE.md, the
/// sysbox-runc contract): `process.args[0]` must be exactly this.
pub const INIT_PATH: &str = "/sbin/init";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitVerdict {
    /// `/sbin/init` resolves to this executable file.
    Present {
        resolved: PathBuf,
    },
    Absent(NoInit),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoInit {
    /// Nothing at `at`: no `/sbin/init`, or a link to nowhere (links are
    /// resolved inside the rootfs, so one aimed at the host lands here).
    Missing { at: PathBuf },
    /// A component on the way is not a directory.
    NotDir { at: PathBuf },
    /// Too many links: a loop.
    Loop { at: PathBuf },
    /// It resolves to something other than a regular file.
    NotRegular { at: PathBuf, kind: &'static str },
    /// A regular file without any execute bit.
    NotExecutable { at: PathBuf },
}

impl InitVerdict {
    pub fn is_present(&self) -> bool {
        matches!(self, InitVerdict::Present { .. })
    }
}

impl fmt::Display for InitVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitVerdict::Present { resolved } => {
                write!(f, "{INIT_PATH} found (-> {})", resolved.display())
            }
            InitVerdict::Absent(why) => match why {
                NoInit::Missing { at } if at == Path::new(INIT_PATH) => {
                    write!(f, "no {INIT_PATH}")
                }
                NoInit::Missing { at } => {
                    write!(
                        f,
                        "{INIT_PATH} leads to {}, which does not exist",
                        at.display()
                    )
                }
                NoInit::NotDir { at } => write!(
                    f,
                    "{INIT_PATH} does not resolve: {} is not a directory",
                    at.display()
                ),
                NoInit::Loop { at } => write!(
                    f,
                    "{INIT_PATH} does not resolve: more than {} links at {}",
                    inroot::MAX_LINKS,
                    at.display()
                ),
                NoInit::NotRegular { at, kind } => {
                    write!(f, "{INIT_PATH} leads to {} which is a {kind}", at.display())
                }
                NoInit::NotExecutable { at } => {
                    write!(
                        f,
                        "{INIT_PATH} leads to {} which is not executable",
                        at.display()
                    )
                }
            },
        }
    }
}

/// Looks for `/sbin/init` in the rootfs.
pub fn detect_init(rootfs: &Path) -> Result<InitVerdict, BundleError> {
    executable_in(rootfs, Path::new(INIT_PATH))
}

/// Whether `path` inside the rootfs resolves to a regular executable file.
pub fn executable_in(rootfs: &Path, path: &Path) -> Result<InitVerdict, BundleError> {
    let err = |source| BundleError::Rootfs {
        path: rootfs.to_path_buf(),
        source,
    };
    let root = inroot::open_root(rootfs).map_err(err)?;
    Ok(match inroot::resolve(&root, path).map_err(err)? {
        Outcome::Found(found) => judge(found.path, found.stat.st_mode),
        Outcome::Failed(Walk::Missing { at }) => InitVerdict::Absent(NoInit::Missing { at }),
        Outcome::Failed(Walk::NotDir { at }) => InitVerdict::Absent(NoInit::NotDir { at }),
        Outcome::Failed(Walk::Loop { at }) => InitVerdict::Absent(NoInit::Loop { at }),
    })
}

/// The verdict on what a path resolved to, from its mode alone.
pub fn judge(at: PathBuf, mode: u32) -> InitVerdict {
    let kind = match FileType::from_raw_mode(mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("directory"),
        FileType::Symlink => Some("symlink"),
        FileType::Fifo => Some("fifo"),
        FileType::Socket => Some("socket"),
        FileType::CharacterDevice => Some("character device"),
        FileType::BlockDevice => Some("block device"),
        FileType::Unknown => Some("file of unknown type"),
    };
    match kind {
        Some(kind) => InitVerdict::Absent(NoInit::NotRegular { at, kind }),
        None if mode & 0o111 == 0 => InitVerdict::Absent(NoInit::NotExecutable { at }),
        None => InitVerdict::Present { resolved: at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn exe(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"#!").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn verdict(r: &Path) -> InitVerdict {
        detect_init(r).unwrap()
    }

    #[test]
    fn debian_layout_merged_usr_and_systemd_link() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        exe(&r.join("usr/lib/systemd/systemd"));
        std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/lib/systemd/systemd", r.join("usr/sbin/init")).unwrap();
        let v = verdict(r);
        assert_eq!(
            v,
            InitVerdict::Present {
                resolved: "/usr/lib/systemd/systemd".into()
            }
        );
        assert!(v.to_string().contains("/usr/lib/systemd/systemd"));
    }

    #[test]
    fn plain_file_and_relative_link() {
        let t = tempfile::tempdir().unwrap();
        exe(&t.path().join("sbin/init"));
        assert!(verdict(t.path()).is_present());
        let t = tempfile::tempdir().unwrap();
        exe(&t.path().join("bin/busybox"));
        std::fs::create_dir(t.path().join("sbin")).unwrap();
        symlink("../bin/busybox", t.path().join("sbin/init")).unwrap();
        assert!(verdict(t.path()).is_present());
    }

    #[test]
    fn absent_forms() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(
            verdict(r),
            InitVerdict::Absent(NoInit::Missing {
                at: INIT_PATH.into()
            })
        );
        assert_eq!(verdict(r).to_string(), "no /sbin/init");
        std::fs::create_dir_all(r.join("sbin/init")).unwrap();
        assert!(matches!(
            verdict(r),
            InitVerdict::Absent(NoInit::NotRegular {
                kind: "directory",
                ..
            })
        ));
        std::fs::remove_dir(r.join("sbin/init")).unwrap();
        std::fs::write(r.join("sbin/init"), b"").unwrap();
        assert!(matches!(
            verdict(r),
            InitVerdict::Absent(NoInit::NotExecutable { .. })
        ));
    }

    #[test]
    fn escapes_dangling_and_loops_do_not_count() {
        // An executable outside the rootfs, reachable on the host by both an
        // absolute and a `..` link: neither may find it.
        let t = tempfile::tempdir().unwrap();
        exe(&t.path().join("host-init"));
        let r = t.path().join("rootfs");
        std::fs::create_dir_all(r.join("sbin")).unwrap();
        let host = t.path().join("host-init");
        symlink(&host, r.join("sbin/init")).unwrap();
        assert!(matches!(
            verdict(&r),
            InitVerdict::Absent(NoInit::Missing { .. })
        ));
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        symlink("../../host-init", r.join("sbin/init")).unwrap();
        let v = verdict(&r);
        assert_eq!(
            v,
            InitVerdict::Absent(NoInit::Missing {
                at: "/host-init".into()
            })
        );
        assert!(v.to_string().contains("does not exist"));
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        symlink("/sbin/init", r.join("sbin/init")).unwrap();
        assert!(matches!(
            verdict(&r),
            InitVerdict::Absent(NoInit::Loop { .. })
        ));
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        symlink("/nowhere/init", r.join("sbin/init")).unwrap();
        assert!(matches!(
            verdict(&r),
            InitVerdict::Absent(NoInit::Missing { .. })
        ));
    }

    #[test]
    fn judge_by_mode() {
        assert!(judge("/x".into(), 0o100700).is_present());
        assert!(!judge("/x".into(), 0o100644).is_present());
        assert!(!judge("/x".into(), 0o020755).is_present());
    }
}
