//! The cache's file system decides whether overlay and ID mapping can work
//! on it: refuse the ones that break them before anything is downloaded.

use std::path::Path;

/// statfs(2) magic numbers (linux/magic.h).
const NFS: i64 = 0x6969;
const SMB2: i64 = 0xfe534d42;
const CIFS: i64 = 0xff534d42;
const FUSE: i64 = 0x65735546;
const OVERLAY: i64 = 0x794c7630;
const TMPFS: i64 = 0x01021994;
const XFS: i64 = 0x58465342;

const EXT4: i64 = 0xEF53;
const BTRFS: i64 = 0x9123_683E;
const ZFS: i64 = 0x2FC1_2FC1;

/// A file system's name for messages.
pub fn name(magic: i64) -> &'static str {
    match magic {
        EXT4 => "ext4",
        BTRFS => "btrfs",
        XFS => "xfs",
        ZFS => "zfs",
        TMPFS => "tmpfs",
        OVERLAY => "overlayfs",
        NFS => "nfs",
        FUSE => "fuse",
        SMB2 | CIFS => "smb",
        _ => "local",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFs {
    Good(&'static str),
    /// Works, with a caveat worth a log line.
    Caveat(&'static str, &'static str),
    Refused(&'static str, &'static str),
}

/// The verdict for a file system magic number.
pub fn judge(magic: i64) -> CacheFs {
    match magic {
        NFS => CacheFs::Refused("NFS", "CVMs do not support NFS for the layer cache: overlayfs cannot use NFS layers as lower dirs and ID-mapped mounts are not supported there; put CVMD_CACHE_DIR on a local disk (hostPath or a disk-backed emptyDir)"),
        SMB2 | CIFS => CacheFs::Refused("SMB/CIFS", "CVMs do not support SMB/CIFS for the layer cache: overlayfs and ID mapping need a local file system; put CVMD_CACHE_DIR on a local disk"),
        FUSE => CacheFs::Refused("FUSE", "CVMs do not support a FUSE file system for the layer cache: overlayfs lower dirs and ID mapping need a local file system; put CVMD_CACHE_DIR on a local disk"),
        OVERLAY => CacheFs::Caveat("overlayfs", "the cache is on overlayfs (the container's own root?): workspaces fall back to flat copies; mount a hostPath or emptyDir at CVMD_CACHE_DIR to share layers and start fast"),
        TMPFS => CacheFs::Caveat("tmpfs", "the cache is on tmpfs: it lives in memory and is lost on reboot; ID-mapped mounts on tmpfs need kernel 6.3 or newer"),
        XFS => CacheFs::Caveat("xfs", "the cache is on XFS: overlayfs needs it formatted with ftype=1 (the default since xfsprogs 3.2.3)"),
        _ => CacheFs::Good("local"),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cache dir {path}: {why}")]
pub struct CacheFsError {
    pub path: String,
    pub why: String,
}

/// Checks the file system under `cache_dir` (created if missing).
pub fn check(cache_dir: &Path) -> Result<CacheFs, CacheFsError> {
    let err = |why: String| CacheFsError {
        path: cache_dir.display().to_string(),
        why,
    };
    std::fs::create_dir_all(cache_dir).map_err(|e| err(e.to_string()))?;
    let st = rustix::fs::statfs(cache_dir).map_err(|e| err(e.to_string()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by arch
    let verdict = judge(st.f_type as i64);
    match verdict {
        CacheFs::Refused(_, why) => Err(err(why.to_string())),
        CacheFs::Caveat(name, why) => {
            tracing::warn!(fs = name, "{why}");
            Ok(verdict)
        }
        CacheFs::Good(_) => Ok(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_is_refused_with_the_fix() {
        let CacheFs::Refused(name, why) = judge(NFS) else {
            panic!()
        };
        assert_eq!(name, "NFS");
        assert!(why.starts_with("CVMs do not support NFS") && why.contains("CVMD_CACHE_DIR"));
        assert!(matches!(judge(TMPFS), CacheFs::Caveat("tmpfs", _)));
        assert_eq!(judge(0xEF53), CacheFs::Good("local"), "ext4");
    }

    #[test]
    fn a_local_dir_passes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check(&dir.path().join("cache")).is_ok());
    }
}
