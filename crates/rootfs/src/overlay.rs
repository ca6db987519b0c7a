//! Overlay mode: the sequence of mount calls, with its fallbacks, over the
//! [`MountOps`] seam.
//!
//! 1. New mount API, one `lowerdir+` per layer (Linux ≥ 6.8): no length
//!    limit on the layer list. ID-mapped layers go in as detached-mount fds
//!    (Linux ≥ 6.13), so no helper mount is ever attached.
//! 2. If fds are refused: the ID-mapped mounts are attached under
//!    `<ws>/idmapped/N` and passed by path.
//! 3. If `lowerdir+` is refused: classic mount(2) whose data names the
//!    layers by short relative paths (`l/N` symlinks, or `idmapped/N`), run
//!    with the cwd at the workspace dir, so 500 layers fit in one page.
//!
//! Helper mounts are detached as soon as the overlay is mounted: overlayfs
//! holds private clones of its layers' mounts (`clone_private_mount`), so
//! nothing is left for teardown but the overlay itself.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::plan::{classic_options, overlay_lower_order, MOUNT_DATA_MAX};
use super::sys::{Lower, MountOps, StepError};
use super::RootfsError;

pub const LINKS_DIR: &str = "l";
pub const HELPERS_DIR: &str = "idmapped";

/// How the overlay got mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    FsconfigFds,
    FsconfigPaths,
    Classic,
}

/// The kernel refused the API itself (not our values): time for the next
/// fallback. Unknown parameters are EINVAL (`vfs_parse_fs_param`), fds for
/// a parameter that takes none are EINVAL too; no new mount API is ENOSYS.
fn refused(e: &StepError) -> bool {
    let code = e.error.raw_os_error();
    (e.step == "fsopen" && code == Some(libc::ENOSYS))
        || (e.step == "lowerdir+" && code == Some(libc::EINVAL))
}

fn overlay_err(target: &Path, e: StepError) -> RootfsError {
    RootfsError::Overlay {
        path: target.to_owned(),
        step: e.step,
        source: e.into_io(),
    }
}

/// Mounts the overlay of `lowers` (bottom to top, absolute) at `target`.
pub fn mount(
    ops: &dyn MountOps,
    lowers: &[PathBuf],
    ws: &Path,
    target: &Path,
    userns: Option<BorrowedFd<'_>>,
) -> Result<Api, RootfsError> {
    let (upper, work) = (ws.join("upper"), ws.join("work"));
    let top_first = overlay_lower_order(lowers);
    let trees: Vec<OwnedFd> = match userns {
        None => Vec::new(),
        Some(ns) => top_first
            .iter()
            .map(|p| {
                ops.idmapped_tree(p, ns).map_err(|e| RootfsError::IdMap {
                    path: p.clone(),
                    step: e.step,
                    source: e.error,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let first: Vec<Lower<'_>> = if trees.is_empty() {
        top_first.iter().map(|p| Lower::Path(p)).collect()
    } else {
        trees.iter().map(|t| Lower::Fd(t.as_fd())).collect()
    };
    let e = match ops.overlay_fsconfig(&first, &upper, &work, target) {
        Ok(()) => {
            return Ok(if trees.is_empty() {
                Api::FsconfigPaths
            } else {
                Api::FsconfigFds
            })
        }
        Err(e) if refused(&e) => e,
        Err(e) => return Err(overlay_err(target, e)),
    };
    tracing::debug!(step = e.step, error = %e.error, "overlay: new mount API refused, falling back");
    if trees.is_empty() {
        make_links(ws, &top_first)?;
        return classic(ops, ws, lowers.len(), LINKS_DIR, target).map(|()| Api::Classic);
    }
    // Top first: helper N holds lower N of `top_first`; the classic option
    // string names bottom-to-top indices, so number helpers bottom to top.
    let helpers = attach_helpers(ops, ws, &trees)?;
    let by_path: Vec<Lower<'_>> = helpers.iter().map(|p| Lower::Path(p)).collect();
    let result = match ops.overlay_fsconfig(&by_path, &upper, &work, target) {
        Ok(()) => Ok(Api::FsconfigPaths),
        Err(e) if refused(&e) => {
            classic(ops, ws, lowers.len(), HELPERS_DIR, target).map(|()| Api::Classic)
        }
        Err(e) => Err(overlay_err(target, e)),
    };
    detach_helpers(ops, &helpers);
    let _ = std::fs::remove_dir(ws.join(HELPERS_DIR));
    result
}

fn classic(
    ops: &dyn MountOps,
    ws: &Path,
    n: usize,
    prefix: &str,
    target: &Path,
) -> Result<(), RootfsError> {
    let data = classic_options(n, prefix);
    if data.len() > MOUNT_DATA_MAX {
        return Err(RootfsError::Overlay {
            path: target.to_owned(),
            step: "mount(2) option string",
            source: io::Error::other(format!(
                "{n} layers do not fit in one page of mount options"
            )),
        });
    }
    ops.overlay_classic(ws, &data, target)
        .map_err(|source| RootfsError::Overlay {
            path: target.to_owned(),
            step: "mount(2)",
            source,
        })
}

/// `<ws>/l/N` -> layer N (bottom to top), recreated on every mount so they
/// always match this image.
fn make_links(ws: &Path, top_first: &[PathBuf]) -> Result<(), RootfsError> {
    let dir = ws.join(LINKS_DIR);
    let prep = |source| RootfsError::Prepare {
        path: dir.clone(),
        source,
    };
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(prep(e)),
        _ => {}
    }
    std::fs::create_dir(&dir).map_err(prep)?;
    for (i, layer) in top_first.iter().rev().enumerate() {
        std::os::unix::fs::symlink(layer, dir.join(i.to_string())).map_err(prep)?;
    }
    Ok(())
}

/// Attaches the ID-mapped trees (given top first) at `<ws>/idmapped/N`,
/// N counted bottom to top; returns the helper paths top first.
fn attach_helpers(
    ops: &dyn MountOps,
    ws: &Path,
    trees: &[OwnedFd],
) -> Result<Vec<PathBuf>, RootfsError> {
    let mut attached = Vec::new();
    for (k, tree) in trees.iter().enumerate() {
        let at = ws.join(HELPERS_DIR).join((trees.len() - 1 - k).to_string());
        let res = std::fs::create_dir_all(&at).and_then(|()| ops.attach(tree.as_fd(), &at));
        if let Err(source) = res {
            detach_helpers(ops, &attached);
            return Err(RootfsError::IdMap {
                path: at,
                step: "attach helper mount",
                source,
            });
        }
        attached.push(at);
    }
    Ok(attached)
}

/// Detaches helper mounts and removes their mount points; failures only
/// leave an empty dir or a lazily unmounted mount behind, so they are
/// logged, not returned.
pub fn detach_helpers(ops: &dyn MountOps, helpers: &[PathBuf]) {
    for at in helpers {
        if let Err(e) = ops.unmount(at, true) {
            tracing::warn!(path = %at.display(), error = %e, "cannot detach helper mount");
        }
        let _ = std::fs::remove_dir(at);
    }
}
