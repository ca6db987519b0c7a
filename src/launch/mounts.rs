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
    #[error("cannot stage the mount of {path:?} at {stage:?}: {source}; check that CVMD_STATE_DIR is writable")]
    Stage {
        path: PathBuf,
        stage: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot chown {path:?} into the workspace's ID range: {source}; this kernel cannot ID-map the mount, so cvmd chowns it: mount a source cvmd may chown (not read-only or root-squashed), or, under sysbox-runc, set CVMD_IDMAP=none")]
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
    let userns = crate::rootfs::userns_fd(map);
    let idmap = |source: &Path, stage: &Path| match &userns {
        Ok(ns) => idmapped(source, stage, ns.as_fd()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    };
    prepare_with(mounts, map, stage_dir, &idmap)
}

/// [`prepare`] with the ID-mapped mount step as a seam: `idmap(source,
/// stage)` attaches an ID-mapped clone of `source` at `stage`.
pub fn prepare_with(
    mounts: &[UserMount],
    map: &IdMap,
    stage_dir: &Path,
    idmap: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<Vec<(UserMount, Mapped)>, MountError> {
    teardown(stage_dir);
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
        match idmap(&m.source, &stage) {
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

    const MAP: IdMap = IdMap {
        host_uid: 300000,
        host_gid: 400000,
        size: 65536,
    };

    fn mount(source: &Path, destination: &str) -> UserMount {
        UserMount {
            source: source.to_path_buf(),
            destination: destination.into(),
            readonly: false,
        }
    }

    #[test]
    fn idmapped_mounts_replace_the_source_with_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let stage = dir.path().join("stage");
        let calls = std::cell::RefCell::new(Vec::new());
        let out = prepare_with(
            &[mount(&src, "/a"), mount(&dir.path().join("file"), "/b")],
            &MAP,
            &stage,
            &|s, st| {
                calls.borrow_mut().push((s.to_path_buf(), st.to_path_buf()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.source, stage.join("0"));
        assert_eq!(out[1].0.source, stage.join("1"));
        assert_eq!(out[0].0.destination, Path::new("/a"));
        assert!(out.iter().all(|(_, how)| *how == Mapped::IdMapped));
        // A dir is staged on a dir, a file on a file.
        assert!(stage.join("0").is_dir() && stage.join("1").is_file());
        assert_eq!(calls.borrow()[0], (src.clone(), stage.join("0")));
        teardown(&stage);
        assert!(!stage.exists());
        let e = prepare_with(
            &[mount(&dir.path().join("absent"), "/c")],
            &MAP,
            &stage,
            &|_, _| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("check CVMD_MOUNTS"), "{e}");
    }

    #[test]
    fn chown_fallback_when_idmapping_is_impossible_needs_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/user-file"), "x").unwrap();
        std::os::unix::fs::lchown(src.join("sub/user-file"), Some(1000), Some(1000)).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "not ours").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
        let stage = dir.path().join("stage");
        let out = prepare_with(&[mount(&src, "/a")], &MAP, &stage, &|_, _| {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        })
        .unwrap();
        assert_eq!(out[0], (mount(&src, "/a"), Mapped::Chowned));
        let owner = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(&src), (300000, 400000));
        assert_eq!(owner(&src.join("sub")), (300000, 400000));
        assert_eq!(owner(&src.join("sub/user-file")), (301000, 401000));
        assert_eq!(owner(&src.join("link")), (300000, 400000));
        // The link was not followed out of the tree.
        assert_eq!(owner(&outside), (0, 0));
        // A second run changes nothing.
        prepare_with(&[mount(&src, "/a")], &MAP, &stage, &|_, _| {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        })
        .unwrap();
        assert_eq!(owner(&src.join("sub/user-file")), (301000, 401000));
        teardown(&stage);
    }

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
