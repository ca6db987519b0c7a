//! The workspace's disk, as a machine's: where its writable layer lives
//! (the state dir, or a persistent volume), which paths persist, and what
//! a start on a different image does to it.
//!
//! - `CVMD_PERSIST=disk`: the whole writable layer (`upper/`, or the flat
//!   copy) is `<CVMD_PERSIST_DIR>/disk/`; its owners are the workspace's
//!   host IDs, recorded beside it and shifted when the range changes
//!   (`rootfs::keep`).
//! - `CVMD_PERSIST=paths`: each of `CVMD_PERSIST_PATHS` is a directory
//!   `<CVMD_PERSIST_DIR>/paths/<name>` mounted over that path, its owners
//!   stored as the workspace sees them (unshifted) and mapped into the
//!   workspace's range by an ID-mapped mount (`launch::mounts`), so any
//!   range reads them right. A new one starts as the image's copy.
//!
//! The writable layer records the manifest digest it was made on
//! (`<disk>/image`); a start on another digest keeps, resets or rebases it
//! (`CVMD_ON_IMAGE_CHANGE`). The volume is untrusted: no symlink is
//! followed out of it, and a corrupt record is an unknown image.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::digest::Digest;

mod paths;
pub mod size;
mod watch;

pub use paths::{path_name, persistent_mounts};
pub use watch::{size_check, watch_full};

/// `CVMD_PERSIST`: what lives on `CVMD_PERSIST_DIR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    Disk,
    Paths,
}

impl FromStr for Persist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disk" => Ok(Persist::Disk),
            "paths" => Ok(Persist::Paths),
            _ => Err(format!("{s:?} is not disk or paths")),
        }
    }
}

/// `CVMD_ON_IMAGE_CHANGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnImageChange {
    Keep,
    Reset,
    Rebase,
}

impl FromStr for OnImageChange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(OnImageChange::Keep),
            "reset" => Ok(OnImageChange::Reset),
            "rebase" => Ok(OnImageChange::Rebase),
            _ => Err(format!("{s:?} is not keep, reset or rebase")),
        }
    }
}

/// A comma-separated list of absolute paths, none `/` and none with `..`.
pub fn parse_paths(v: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        if !path.is_absolute() || crate::rootfs::keep_relative(&path).is_none() {
            return Err(format!(
                "{p:?} is not an absolute path below / without '..'"
            ));
        }
        out.push(path);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct DiskSettings {
    pub persist_dir: Option<PathBuf>,
    pub persist: Persist,
    pub paths: Vec<PathBuf>,
    pub on_image_change: OnImageChange,
    /// `CVMD_DISK_SIZE`: bytes of the one file system that holds the
    /// writable layer and the persistent paths.
    pub size: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("persistent volume {path:?} cannot be used: {why}; mount the workspace's volume there (CVMD_PERSIST_DIR) as a real directory")]
    Volume { path: PathBuf, why: String },
    #[error("cannot prepare the persistent path {path:?} on the volume at {at:?}: {source}; check that CVMD_PERSIST_DIR is writable by root")]
    Path {
        path: PathBuf,
        at: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bound the workspace's disk (CVMD_DISK_SIZE): {what}: {why}")]
    Size { what: String, why: String },
    #[error("cannot record the image of the workspace's disk in {path:?}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const RECORD: &str = "image";

/// A directory of the volume: created when missing, refused when it is a
/// symlink or another kind of file.
fn volume_dir(path: &Path) -> Result<(), DiskError> {
    let bad = |why: String| DiskError::Volume {
        path: path.to_owned(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(bad(
            "it is not a directory (a symlink is not followed)".into()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| bad(e.to_string())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Where the writable layer lives: on the volume for `persist=disk`.
pub fn disk_dir(s: &DiskSettings, ws_dir: &Path) -> Result<PathBuf, DiskError> {
    match (&s.persist_dir, s.persist) {
        (Some(vol), Persist::Disk) => {
            volume_dir(vol)?;
            let dir = vol.join("disk");
            volume_dir(&dir)?;
            Ok(dir)
        }
        _ => Ok(ws_dir.join("disk")),
    }
}

/// What the disk's record says it was made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    None,
    Image(Digest),
    Unknown(String),
}

pub fn read_record(disk: &Path) -> Recorded {
    let path = disk.join(RECORD);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    let mut text = String::new();
    match file {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Recorded::None,
        Err(e) => return Recorded::Unknown(e.to_string()),
        Ok(f) => {
            if let Err(e) = f.take(1024).read_to_string(&mut text) {
                return Recorded::Unknown(e.to_string());
            }
        }
    }
    match text.trim().parse::<Digest>() {
        Ok(d) => Recorded::Image(d),
        Err(e) => Recorded::Unknown(format!("{:?} is not a digest: {e}", text.trim())),
    }
}

pub fn write_record(disk: &Path, digest: &Digest) -> Result<(), DiskError> {
    let path = disk.join(RECORD);
    let tmp = disk.join(".image.tmp");
    let err = |source| DiskError::Record {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, format!("{digest}\n")).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// What this start does with the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No disk yet.
    Fresh,
    /// Made on this image.
    Same,
    /// Made on another (or an unknown) image: the setting's answer.
    Changed { from: String, action: OnImageChange },
}

/// A disk without a record was made before records existed, or its record
/// was lost: an unknown image, which is never this one.
pub fn decide(
    has_disk: bool,
    recorded: &Recorded,
    current: &Digest,
    policy: OnImageChange,
) -> Decision {
    if !has_disk {
        return Decision::Fresh;
    }
    let from = match recorded {
        Recorded::Image(d) if d == current => return Decision::Same,
        Recorded::Image(d) => d.to_string(),
        Recorded::None => "an unrecorded image".to_string(),
        Recorded::Unknown(_) => "an unknown image (unreadable record)".to_string(),
    };
    Decision::Changed {
        from,
        action: policy,
    }
}

/// What the rootfs stage is asked to do with the disk.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub dir: PathBuf,
    pub reset: bool,
    /// Kept by a rebase.
    pub carry: Vec<PathBuf>,
    pub decision: Decision,
    /// The settings as the rest of the start sees them: with a size, the
    /// volume is the mounted image file.
    pub effective: DiskSettings,
    pub bounded: Option<size::Bounded>,
}

impl Prepared {
    /// For Status: where the disk is and what this start did with it.
    pub fn describe(&self, s: &DiskSettings, current: &Digest) -> String {
        let kept = || {
            s.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let place = match (&s.persist_dir, s.persist) {
            (None, _) => "in the state dir (not persistent)".to_string(),
            (Some(v), Persist::Disk) => format!("whole disk on {}", v.display()),
            (Some(v), Persist::Paths) => format!("{} on {}", kept(), v.display()),
        };
        let what = match &self.decision {
            Decision::Fresh => format!("new, made on {current}"),
            Decision::Same => format!("kept, made on {current}"),
            Decision::Changed { from, action } => {
                let done = match action {
                    OnImageChange::Keep => "kept the whole writable layer".to_string(),
                    OnImageChange::Reset => "started the writable layer fresh".to_string(),
                    OnImageChange::Rebase => {
                        format!("rebased: kept {}, started the rest fresh", kept())
                    }
                };
                format!(
                    "image changed from {from} to {current}: {done} (CVMD_ON_IMAGE_CHANGE={})",
                    action_name(*action)
                )
            }
        };
        format!("{place}; {what}")
    }
}

fn action_name(a: OnImageChange) -> &'static str {
    match a {
        OnImageChange::Keep => "keep",
        OnImageChange::Reset => "reset",
        OnImageChange::Rebase => "rebase",
    }
}

fn no_links(dir: &Path) -> Result<(), DiskError> {
    for name in crate::rootfs::ws_dir::ENTRIES {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(DiskError::Volume {
                path,
                why: "it is a symlink (a symlink is not followed)".into(),
            });
        }
    }
    Ok(())
}

/// Looks at the disk's record and decides; logs an unreadable record.
pub fn prepare(s: &DiskSettings, ws_dir: &Path, current: &Digest) -> Result<Prepared, DiskError> {
    let (dir, effective, bounded) = match s.size {
        None => (disk_dir(s, ws_dir)?, s.clone(), None),
        Some(bytes) => {
            let home = match &s.persist_dir {
                Some(vol) => {
                    volume_dir(vol)?;
                    vol.clone()
                }
                None => ws_dir.to_path_buf(),
            };
            let bounded = size::mount(&home, ws_dir, bytes)?;
            let effective = DiskSettings {
                persist_dir: s.persist_dir.as_ref().map(|_| bounded.mount.clone()),
                ..s.clone()
            };
            // One file system bounds both: the writable layer is in it
            // whatever CVMD_PERSIST says.
            let dir = bounded.mount.join("disk");
            volume_dir(&dir)?;
            (dir, effective, Some(bounded))
        }
    };
    no_links(&dir)?;
    let recorded = read_record(&dir);
    if let Recorded::Unknown(why) = &recorded {
        tracing::warn!(record = %dir.join(RECORD).display(), why, "the disk's image record is unreadable: treating the disk as made on an unknown image");
    }
    let decision = decide(
        crate::rootfs::ws_dir::has_disk(&dir),
        &recorded,
        current,
        s.on_image_change,
    );
    let (reset, carry) = match &decision {
        Decision::Changed {
            action: OnImageChange::Reset,
            ..
        } => (true, Vec::new()),
        Decision::Changed {
            action: OnImageChange::Rebase,
            ..
        } => (true, s.paths.clone()),
        _ => (false, Vec::new()),
    };
    Ok(Prepared {
        dir,
        reset,
        carry,
        decision,
        effective,
        bounded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn settings_parse() {
        assert_eq!("disk".parse(), Ok(Persist::Disk));
        assert!("Disk".parse::<Persist>().is_err());
        assert_eq!("rebase".parse(), Ok(OnImageChange::Rebase));
        assert!("rebuild".parse::<OnImageChange>().is_err());
        assert_eq!(
            parse_paths("/home, /var/lib/docker").unwrap(),
            vec![PathBuf::from("/home"), PathBuf::from("/var/lib/docker")]
        );
        for bad in ["home", "/", "/a/../etc"] {
            assert!(parse_paths(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_disk_on_another_or_an_unknown_image_gets_the_settings_answer() {
        let (a, b) = (digest('a'), digest('b'));
        let keep = OnImageChange::Keep;
        assert_eq!(
            decide(false, &Recorded::Image(b.clone()), &a, keep),
            Decision::Fresh
        );
        assert_eq!(
            decide(true, &Recorded::Image(a.clone()), &a, keep),
            Decision::Same
        );
        assert!(matches!(
            decide(true, &Recorded::Image(b), &a, OnImageChange::Rebase),
            Decision::Changed {
                action: OnImageChange::Rebase,
                ..
            }
        ));
        assert!(matches!(
            decide(
                true,
                &Recorded::Unknown("x".into()),
                &a,
                OnImageChange::Reset
            ),
            Decision::Changed {
                action: OnImageChange::Reset,
                ..
            }
        ));
        assert!(matches!(
            decide(true, &Recorded::None, &a, keep),
            Decision::Changed { .. }
        ));
    }

    #[test]
    fn records_round_trip_and_garbage_or_links_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_record(dir.path()), Recorded::None);
        write_record(dir.path(), &digest('c')).unwrap();
        assert_eq!(read_record(dir.path()), Recorded::Image(digest('c')));
        std::fs::write(dir.path().join(RECORD), "sha256:zz").unwrap();
        assert!(matches!(read_record(dir.path()), Recorded::Unknown(_)));
        std::fs::remove_file(dir.path().join(RECORD)).unwrap();
        std::fs::write(dir.path().join("elsewhere"), format!("{}\n", digest('d'))).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join(RECORD)).unwrap();
        assert!(matches!(read_record(dir.path()), Recorded::Unknown(_)));
    }
}
