//! User mounts (`CVMD_MOUNTS`) with their ownership mapped into the
//! workspace's ID range when it has one (`--idmap`): without it, a dir
//! owned by root outside shows as nobody inside the user namespace, and
//! root inside cannot write it.
//!
//! cvmd clones each source as an ID-mapped mount (recursively: submounts
//! too) and attaches it under the workspace's state dir; the bundle binds
//! that staged mount, and the bind keeps the mapping. The source itself is
//! never changed. Only where the kernel or the source's file system cannot
//! ID-map does cvmd fall back to envbox's way, chowning the source tree
//! into the range, and it says so in the log, since that changes the outer
//! files for good.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::bundle::UserMount;
use crate::rootfs::IdMap;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount source {path:?} cannot be used: {source}; check CVMD_MOUNTS")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stage the mount of {path:?} at {stage:?}: {source}")]
    Stage {
        path: PathBuf,
        stage: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot chown {path:?} into the workspace's ID range: {source}")]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a mount's ownership was mapped, for the log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    IdMapped,
    Chowned,
}

/// Stages `mounts` for a workspace with ID mapping `map` under `stage_dir`
/// and returns what the bundle should bind instead. Undo with [`teardown`],
/// also on failure.
pub fn prepare(
    mounts: &[UserMount],
    map: &IdMap,
    stage_dir: &Path,
) -> Result<Vec<(UserMount, Mapped)>, MountError> {
    teardown(stage_dir);
    let userns = crate::rootfs::userns_fd(map);
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let meta = std::fs::metadata(&m.source).map_err(|source| MountError::Source {
            path: m.source.clone(),
            source,
        })?;
        let stage = stage_dir.join(i.to_string());
        stage_point(&stage, meta.is_dir()).map_err(|source| MountError::Stage {
            path: m.source.clone(),
            stage: stage.clone(),
            source,
        })?;
        let staged = match &userns {
            Ok(ns) => idmapped(&m.source, &stage, ns.as_fd()),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        match staged {
            Ok(()) => out.push((
                UserMount {
                    source: stage,
                    ..m.clone()
                },
                Mapped::IdMapped,
            )),
            Err(e) => {
                let _ = remove(&stage);
                tracing::warn!(
                    source = %m.source.display(), error = %e,
                    "ID-mapped mounts are impossible here: chowning the mount source into the workspace's ID range instead (this changes the outer files)"
                );
                chown_tree(&m.source, map)?;
                out.push((m.clone(), Mapped::Chowned));
            }
        }
    }
    Ok(out)
}

/// Creates the stage point for a dir or a file source.
fn stage_point(stage: &Path, dir: bool) -> std::io::Result<()> {
    if let Some(parent) = stage.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if dir {
        std::fs::create_dir(stage)
    } else {
        std::fs::File::create(stage).map(drop)
    }
}

fn idmapped(
    source: &Path,
    stage: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    let tree = crate::rootfs::idmapped_clone(source, userns, true).map_err(|e| e.into_io())?;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        stage,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(std::io::Error::from)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Detaches and removes every staged mount (what a crash left too).
pub fn teardown(stage_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(stage_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Detach: the workspace's runtime may still hold a bind of it.
        let _ = rustix::mount::unmount(
            &path,
            rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
        );
        if let Err(e) = remove(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a staged mount point");
        }
    }
    let _ = std::fs::remove_dir(stage_dir);
}

/// The owner an outer ID gets in the chown fallback: IDs already in the
/// range stay (a rerun changes nothing), others shift into it.
pub fn chowned_id(id: u32, base: u32, size: u32) -> u32 {
    if (base..base.saturating_add(size)).contains(&id) {
        id
    } else {
        crate::rootfs::shift_id(id, base, size)
    }
}

/// envbox's fallback: every entry's owner shifted into the range, links
/// not followed, other file systems not entered.
fn chown_tree(root: &Path, map: &IdMap) -> Result<(), MountError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MountError::Chown { path, source }
    };
    let dev = std::fs::symlink_metadata(root).map_err(err(root))?.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(err(&path))?;
        if meta.dev() != dev {
            continue;
        }
        let uid = chowned_id(meta.uid(), map.host_uid, map.size);
        let gid = chowned_id(meta.gid(), map.host_gid, map.size);
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(err(&path))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(err(&path))? {
                stack.push(entry.map_err(err(&path))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_fallback_ids() {
        assert_eq!(chowned_id(0, 100000, 65536), 100000);
        assert_eq!(chowned_id(1000, 100000, 65536), 101000);
        // Already shifted by an earlier run: unchanged.
        assert_eq!(chowned_id(101000, 100000, 65536), 101000);
        // Out of the range: the overflow ID inside it.
        assert_eq!(chowned_id(70000, 100000, 65536), 165534);
    }
}
