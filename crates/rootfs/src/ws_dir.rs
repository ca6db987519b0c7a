//! The per-workspace directory: its disk (`upper/` + `work/`, or `flat/`
//! with the `flat.idmap` note of how its owners were written) and the
//! helper dirs of a mount in progress (`l/`, `idmapped/`).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::overlay::{self, HELPERS_DIR, LINKS_DIR};
use super::sys::MountOps;
use super::{idshift, IdMap, RootfsError};

pub const UPPER: &str = "upper";
pub const WORK: &str = "work";
pub const FLAT: &str = "flat";
pub const FLAT_TMP: &str = "flat.tmp";
pub const FLAT_NOTE: &str = "flat.idmap";
pub const EMPTY: &str = "empty";

/// Every name the rootfs stage opens, writes or mounts in a workspace dir.
/// A caller that hands over a dir it does not own (a volume) refuses a
/// symlink at any of them: it would point an upper dir or a note's write
/// elsewhere.
pub const ENTRIES: &[&str] = &[
    UPPER,
    WORK,
    FLAT,
    FLAT_TMP,
    FLAT_NOTE,
    super::keep::UPPER_NOTE,
    super::keep::CARRY,
    EMPTY,
    LINKS_DIR,
    HELPERS_DIR,
];

/// The dir holds a writable layer (an overlay upper or a flat copy).
pub fn has_disk(ws: &Path) -> bool {
    [UPPER, FLAT]
        .iter()
        .any(|n| ws.join(n).symlink_metadata().is_ok())
}

fn prep(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Prepare {
        path: path.to_owned(),
        source,
    }
}

fn remove(path: &Path) -> io::Result<()> {
    let res = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates the workspace dir and clears what a crashed assemble may have
/// left (half-made flat copy, helper mounts and links).
pub fn prepare(ops: &dyn MountOps, ws: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(ws).map_err(prep(ws))?;
    let helpers = ws.join(HELPERS_DIR);
    if let Ok(entries) = std::fs::read_dir(&helpers) {
        let stale: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        overlay::detach_helpers(ops, &stale);
    }
    for name in [HELPERS_DIR, LINKS_DIR, FLAT_TMP] {
        let p = ws.join(name);
        remove(&p).map_err(prep(&p))?;
    }
    Ok(())
}

/// Discards the workspace's disk (reset): the overlay upper and work dirs
/// and the flat copy.
pub fn discard_disk(ws: &Path) -> Result<(), RootfsError> {
    for name in [UPPER, WORK, FLAT, FLAT_NOTE, super::keep::UPPER_NOTE] {
        let path = ws.join(name);
        remove(&path).map_err(|source| RootfsError::Reset { path, source })?;
    }
    Ok(())
}

/// Creates `upper/` (if new) with the top layer root's mode and owner,
/// shifted to the mapped root when ID-mapped: the overlay's root shows the
/// upper dir's attributes, so this keeps `/` as the image defines it. Also
/// `work/` and, for an image without layers, an empty lower dir.
pub fn prepare_overlay(
    ws: &Path,
    top_root: Option<&Path>,
    idmap: Option<&IdMap>,
) -> Result<(), RootfsError> {
    let upper = ws.join(UPPER);
    if !upper.exists() {
        let (mode, uid, gid) = match top_root {
            Some(root) => {
                let m = std::fs::metadata(root).map_err(|source| RootfsError::Layer {
                    path: root.to_owned(),
                    source,
                })?;
                (m.mode() & 0o7777, m.uid(), m.gid())
            }
            None => (0o755, 0, 0),
        };
        let (uid, gid) = match idmap {
            Some(map) => (idshift::shift_uid(map, uid), idshift::shift_gid(map, gid)),
            None => (uid, gid),
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&upper)
            .map_err(prep(&upper))?;
        std::os::unix::fs::lchown(&upper, Some(uid), Some(gid)).map_err(prep(&upper))?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(mode))
            .map_err(prep(&upper))?;
    }
    for name in [WORK, EMPTY] {
        let p = ws.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(prep(&p))?;
    }
    Ok(())
}

/// The note kept beside `flat/`: how its owners were written.
pub fn flat_note(shift: Option<&IdMap>) -> String {
    match shift {
        None => "unshifted\n".to_string(),
        Some(m) => format!(
            "shifted uid {} gid {} size {}\n",
            m.host_uid, m.host_gid, m.size
        ),
    }
}

pub fn read_note(ws: &Path) -> String {
    std::fs::read_to_string(ws.join(FLAT_NOTE)).unwrap_or_else(|_| "missing\n".to_string())
}

pub fn write_note(ws: &Path, note: &str) -> Result<(), RootfsError> {
    let p = ws.join(FLAT_NOTE);
    std::fs::write(&p, note).map_err(prep(&p))
}

/// Writes the note `name` of how a disk's owners are written.
pub fn write_named_note(ws: &Path, name: &str, shift: Option<&IdMap>) -> Result<(), RootfsError> {
    let p = ws.join(name);
    std::fs::write(&p, flat_note(shift)).map_err(prep(&p))
}
