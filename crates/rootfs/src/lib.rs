//! Rootfs assembly: the cached layer dirs (overlayfs form, bottom to top)
//! plus the workspace's disk become the inner container's root.
//!
//! - Overlay mode mounts overlayfs over the layer dirs with
//!   `<ws>/upper` + `<ws>/work` as the writable disk (`overlay`).
//! - Flat mode copies the layers into `<ws>/flat`, applying whiteouts and
//!   opaque dirs as overlayfs would, and bind-mounts it (`flat`).
//! - ID mapping: ID-mapped mounts of the layers (or of the flat copy) when
//!   the kernel and file system allow them, else a copy with every owner
//!   shifted (`idshift`).
//!
//! Decisions are plain functions (`plan`, `idshift`, `flat::plan`); kernel
//! calls sit behind [`MountOps`] so the mount sequencing is tested without
//! root.

mod error;
mod flat;
mod fsx;
mod idshift;
mod keep;
pub mod mountinfo;
mod overlay;
mod plan;
pub mod probe;
mod sys;
mod userns;
pub mod version;
pub mod ws_dir;

#[cfg(test)]
mod tests;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::RootfsError;
pub use idshift::shift as shift_id;
pub use keep::relative as keep_relative;
pub use plan::OVERLAYFS_SUPER_MAGIC;
pub use sys::{fs_magic, idmapped_clone, Kernel, Lower, MountOps, StepError};
pub use userns::userns_fd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModePreference {
    Auto,
    Overlay,
    Flat,
}

/// `auto`, `overlay` or `flat`, as the setting and `cvmd rootfs --mode`
/// spell it.
impl std::str::FromStr for ModePreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ModePreference::Auto),
            "overlay" => Ok(ModePreference::Overlay),
            "flat" => Ok(ModePreference::Flat),
            _ => Err(format!("{s:?} is not one of auto, overlay, flat")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Overlay,
    Flat,
}

/// As Status reports it.
impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Overlay => "overlay",
            Mode::Flat => "flat",
        })
    }
}

/// Container ID 0 maps to `host_uid`/`host_gid`, for `size` IDs (≥ 65536,
/// the sysbox-runc contract in docs/ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

/// `HOST_UID[:HOST_GID[:SIZE]]`, SIZE 65536 by default.
impl std::str::FromStr for IdMap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not HOST_UID[:HOST_GID[:SIZE]]");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() > 3 {
            return Err(bad());
        }
        let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
        let host_uid = num(parts[0])?;
        let host_gid = parts.get(1).map_or(Ok(host_uid), |p| num(p))?;
        let size = parts.get(2).map_or(Ok(65536), |p| num(p))?;
        Ok(IdMap {
            host_uid,
            host_gid,
            size,
        })
    }
}

#[cfg(test)]
mod idmap_parse_tests {
    use super::IdMap;

    #[test]
    fn idmap_forms() {
        assert_eq!(
            "100000".parse::<IdMap>().unwrap(),
            IdMap {
                host_uid: 100000,
                host_gid: 100000,
                size: 65536
            }
        );
        assert_eq!(
            "1:2:70000".parse::<IdMap>().unwrap(),
            IdMap {
                host_uid: 1,
                host_gid: 2,
                size: 70000
            }
        );
        assert!("x".parse::<IdMap>().is_err() && "1:2:3:4".parse::<IdMap>().is_err());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMapMode {
    None,
    IdMappedMount,
    ChownedCopy,
}

/// As Status reports it.
impl std::fmt::Display for IdMapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdMapMode::None => "none",
            IdMapMode::IdMappedMount => "idmapped-mount",
            IdMapMode::ChownedCopy => "chowned-copy",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    /// Layer dirs, bottom to top.
    pub layers: Vec<PathBuf>,
    /// Holds the workspace's disk (`upper/`, `work/` or `flat/`) and helpers.
    pub workspace_dir: PathBuf,
    /// Where the rootfs appears (created if missing).
    pub target: PathBuf,
    pub mode: ModePreference,
    pub idmap: Option<IdMap>,
    /// Discard the workspace's disk first.
    pub reset: bool,
    /// With `reset`: paths (absolute, as the workspace sees them) of the
    /// old disk moved into the new one (a rebase on an image change).
    pub carry: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Assembled {
    pub mode: Mode,
    pub idmap_mode: IdMapMode,
    pub target: PathBuf,
    pub phases: Vec<(&'static str, Duration)>,
}

/// Assembles the rootfs at `req.target` with the real kernel.
pub fn assemble(req: &Request) -> Result<Assembled, RootfsError> {
    assemble_with(&Kernel, req)
}

/// Unmounts everything at or beneath `target` (last mounted first), lazily
/// (MNT_DETACH) when busy. Idempotent; never touches the workspace's disk.
pub fn teardown(target: &Path) -> Result<(), RootfsError> {
    teardown_with(&Kernel, target)
}

struct Phases(Vec<(&'static str, Duration)>, Instant);

impl Phases {
    fn mark(&mut self, name: &'static str) {
        self.0.push((name, self.1.elapsed()));
        self.1 = Instant::now();
    }
}

/// [`assemble`] over any [`MountOps`] (tests wrap [`Kernel`] to refuse a
/// feature and exercise a fallback).
pub fn assemble_with(ops: &dyn MountOps, req: &Request) -> Result<Assembled, RootfsError> {
    let span =
        tracing::info_span!("rootfs", target = %req.target.display(), layers = req.layers.len());
    let _enter = span.enter();
    let mut ph = Phases(Vec::new(), Instant::now());
    if let Some(map) = &req.idmap {
        plan::validate_idmap(map).map_err(|reason| RootfsError::BadIdMap { reason })?;
    }
    let layers = req
        .layers
        .iter()
        .map(|l| match std::fs::canonicalize(l) {
            Ok(p) if p.is_dir() => Ok(p),
            Ok(p) => Err(RootfsError::Layer {
                path: p,
                source: std::io::ErrorKind::NotADirectory.into(),
            }),
            Err(source) => Err(RootfsError::Layer {
                path: l.clone(),
                source,
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ws = std::path::absolute(&req.workspace_dir).map_err(|source| RootfsError::Prepare {
        path: req.workspace_dir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&req.target).map_err(|source| RootfsError::Prepare {
        path: req.target.clone(),
        source,
    })?;
    let target = std::fs::canonicalize(&req.target).map_err(|source| RootfsError::Prepare {
        path: req.target.clone(),
        source,
    })?;
    // Checked before touching the workspace: a reset under a live mount
    // would pull the disk out from under a running workspace.
    if !mounts_under(&target)?.is_empty() {
        return Err(RootfsError::TargetBusy { path: target });
    }
    ws_dir::prepare(ops, &ws)?;
    if req.reset {
        if !req.carry.is_empty() {
            let old = [ws_dir::UPPER, ws_dir::FLAT]
                .iter()
                .map(|n| ws.join(n))
                .find(|p| p.is_dir());
            if let Some(old) = old {
                let kept = keep::stash(&ws, &old, &req.carry)?;
                tracing::info!(kept = ?kept, "persistent paths set aside for the new disk");
            }
        }
        ws_dir::discard_disk(&ws)?;
    }
    let facts = plan::Facts {
        workspace_on_overlay: sys::fs_magic(&ws).is_ok_and(|m| m == plan::OVERLAYFS_SUPER_MAGIC),
        has_flat_disk: ws.join(ws_dir::FLAT).exists(),
        layers: layers.len(),
    };
    let (mode, why) =
        plan::choose_mode(req.mode, facts).map_err(|reason| RootfsError::OverlayUnavailable {
            path: ws.clone(),
            reason,
        })?;
    tracing::info!(?mode, reason = why, "rootfs mode chosen");
    ph.mark("prepare");
    let userns: Option<OwnedFd> = match &req.idmap {
        None => None,
        Some(map) => match userns::userns_fd(map) {
            Ok(fd) => Some(fd),
            Err(source) => {
                tracing::warn!(error = %RootfsError::UserNs { source }, "no ID-mapped mounts; using a chowned copy");
                None
            }
        },
    };
    ph.mark("userns");
    let ns = userns.as_ref().map(|fd| fd.as_fd());
    let ctx = Ctx {
        ops,
        req,
        layers: &layers,
        ws: &ws,
        target: &target,
    };
    let idmap_mode = match mode {
        Mode::Flat => return ctx.flat(ns, ph),
        Mode::Overlay if req.idmap.is_some() && ns.is_none() => {
            let reason = "the ID mapping needs a user namespace, which could not be created";
            if req.mode != ModePreference::Auto {
                return Err(RootfsError::OverlayUnavailable {
                    path: ws.clone(),
                    reason: reason.into(),
                });
            }
            tracing::warn!(
                reason,
                "overlay not used; falling back to a chowned flat copy"
            );
            return ctx.flat(None, ph);
        }
        Mode::Overlay => {
            let upper = ws.join(ws_dir::UPPER);
            let kept = upper.exists();
            ws_dir::prepare_overlay(&ws, layers.last().map(PathBuf::as_path), req.idmap.as_ref())?;
            if kept {
                keep::follow_range(&ws, &upper, keep::UPPER_NOTE, req.idmap.as_ref())?;
            } else {
                ws_dir::write_named_note(&ws, keep::UPPER_NOTE, req.idmap.as_ref())?;
            }
            let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
            keep::put_back(&ws, &upper, &req.carry, &top_first, req.idmap.as_ref())?;
            let lowers = if layers.is_empty() {
                vec![ws.join(ws_dir::EMPTY)]
            } else {
                layers.clone()
            };
            match overlay::mount(ops, &lowers, &ws, &target, ns) {
                Ok(api) => {
                    tracing::info!(?api, idmapped = ns.is_some(), "overlay mounted");
                    if ns.is_some() {
                        IdMapMode::IdMappedMount
                    } else {
                        IdMapMode::None
                    }
                }
                Err(e) if req.mode == ModePreference::Auto => {
                    tracing::warn!(error = %e, "overlay not used; falling back to a flat copy");
                    let ns = if matches!(e, RootfsError::IdMap { .. }) {
                        None
                    } else {
                        ns
                    };
                    return ctx.flat(ns, ph);
                }
                Err(e) => return Err(e),
            }
        }
    };
    ph.mark("mount");
    Ok(Assembled {
        mode: Mode::Overlay,
        idmap_mode,
        target,
        phases: ph.0,
    })
}

struct Ctx<'a> {
    ops: &'a dyn MountOps,
    req: &'a Request,
    layers: &'a [PathBuf],
    ws: &'a Path,
    target: &'a Path,
}

impl Ctx<'_> {
    /// Flat mode: reuse or build `<ws>/flat`, then bind it (ID-mapped when
    /// possible) at the target.
    fn flat(&self, ns: Option<BorrowedFd<'_>>, mut ph: Phases) -> Result<Assembled, RootfsError> {
        let flat = self.ws.join(ws_dir::FLAT);
        // Probe on the workspace's own fs: that is where flat/ lives.
        let idmapped = ns.filter(|ns| self.ops.idmapped_tree(self.ws, *ns).is_ok());
        let idmap_mode = plan::choose_idmap(self.req.idmap.as_ref(), idmapped.is_some());
        let shift = self
            .req
            .idmap
            .as_ref()
            .filter(|_| idmap_mode == IdMapMode::ChownedCopy);
        let want = ws_dir::flat_note(shift);
        if flat.exists() {
            let found = ws_dir::read_note(self.ws);
            if found != want && keep::parse_note(&found).is_some() {
                // A kept disk on another ID range: its owners follow.
                keep::follow_range(self.ws, &flat, ws_dir::FLAT_NOTE, shift)?;
            } else if found != want {
                return Err(RootfsError::FlatMismatch {
                    path: flat,
                    found: found.trim().into(),
                    wanted: want.trim().into(),
                });
            }
        } else {
            let tmp = self.ws.join(ws_dir::FLAT_TMP);
            ws_dir::write_note(self.ws, &want)?;
            let stats = flat::build(self.layers, &tmp, shift)?;
            std::fs::rename(&tmp, &flat).map_err(|source| RootfsError::Copy {
                path: flat.clone(),
                source,
            })?;
            let top_first: Vec<PathBuf> = self.layers.iter().rev().cloned().collect();
            keep::put_back(self.ws, &flat, &self.req.carry, &top_first, shift)?;
            tracing::info!(
                entries = stats.entries,
                bytes = stats.bytes,
                reflink = stats.reflinked,
                "flat copy made"
            );
        }
        ph.mark("copy");
        let bind_err = |source| RootfsError::Bind {
            from: flat.clone(),
            path: self.target.to_owned(),
            source,
        };
        match idmapped {
            Some(ns) => {
                let tree = self
                    .ops
                    .idmapped_tree(&flat, ns)
                    .map_err(|e| bind_err(e.into_io()))?;
                self.ops
                    .attach(tree.as_fd(), self.target)
                    .map_err(bind_err)?;
            }
            None => self.ops.bind(&flat, self.target).map_err(bind_err)?,
        }
        tracing::info!(?idmap_mode, "flat rootfs mounted");
        ph.mark("mount");
        Ok(Assembled {
            mode: Mode::Flat,
            idmap_mode,
            target: self.target.to_owned(),
            phases: ph.0,
        })
    }
}

fn mounts_under(target: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let info = sys::read_mountinfo().map_err(|source| RootfsError::MountInfo { source })?;
    Ok(mountinfo::unmount_order(
        &mountinfo::mount_points(&info),
        target,
    ))
}

/// [`teardown`] over any [`MountOps`].
pub fn teardown_with(ops: &dyn MountOps, target: &Path) -> Result<(), RootfsError> {
    let target = match std::fs::canonicalize(target) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RootfsError::Unmount {
                path: target.to_owned(),
                source,
            })
        }
    };
    // Each pass unmounts what the previous one revealed (stacked mounts);
    // bounded so a mount that keeps reappearing cannot loop forever.
    for _ in 0..8 {
        let points = mounts_under(&target)?;
        if points.is_empty() {
            return Ok(());
        }
        for p in points {
            match ops.unmount(&p, false) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::warn!(path = %p.display(), "mount busy; detaching it lazily");
                    ops.unmount(&p, true)
                        .map_err(|source| RootfsError::Unmount {
                            path: p.clone(),
                            source,
                        })?;
                }
                Err(source) => return Err(RootfsError::Unmount { path: p, source }),
            }
        }
    }
    Err(RootfsError::Unmount {
        path: target,
        source: std::io::Error::other("mounts remain after 8 passes"),
    })
}
