//! Errors of the rootfs stage: one variant per failure site, each naming the
//! path involved and what the user can do about it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "cannot prepare workspace directory {path:?}: {source}; check that it is writable by root"
    )]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot discard the previous workspace disk {path:?} (reset): {source}")]
    Reset {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot keep {path:?} of the workspace's disk across the new image or ID range: {source}; check the persistent volume (CVMD_PERSIST_DIR), or set CVMD_ON_IMAGE_CHANGE=reset to start the disk fresh")]
    Keep {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer directory {path:?} is missing or unreadable: {source}; re-unpack the image into the layer cache")]
    Layer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("overlay mount at {path:?} failed ({step}): {source}")]
    Overlay {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "overlay cannot be used for workspace {path:?}: {reason}; \
         use ModePreference::Auto or Flat"
    )]
    OverlayUnavailable { path: PathBuf, reason: String },
    #[error("cannot make an ID-mapped mount of {path:?} ({step}): {source}")]
    IdMap {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a user namespace for the ID mapping: {source}; check user.max_user_namespaces")]
    UserNs {
        #[source]
        source: io::Error,
    },
    #[error("invalid ID mapping: {reason}")]
    BadIdMap { reason: String },
    #[error("cannot copy {path:?} into the flat rootfs: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the flat rootfs {path:?} was made for a different ID mapping ({found}) than requested \
         ({wanted}); assemble with reset to rebuild it"
    )]
    FlatMismatch {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("cannot bind-mount {from:?} onto {path:?}: {source}")]
    Bind {
        from: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path:?} is already a mount point or has mounts beneath it; call rootfs::teardown on it \
         first"
    )]
    TargetBusy { path: PathBuf },
    #[error("cannot read the mount table /proc/self/mountinfo: {source}")]
    MountInfo {
        #[source]
        source: io::Error,
    },
    #[error("cannot unmount {path:?}: {source}; a process may still use it (see fuser -m)")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
