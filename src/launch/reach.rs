//! Whether the workspace's root can reach its rootfs. In a user namespace
//! the runtime's init mounts the rootfs as the workspace's root, which is an
//! unprivileged host ID (the ID range's first): every directory above the
//! rootfs must let that ID search it, or `runtime create` fails with a bare
//! "permission denied" on the rootfs mount. cvmd checks first and names the
//! directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::rootfs::IdMap;

#[derive(Debug, thiserror::Error)]
#[error("the workspace's root (host uid {uid} in its user namespace) cannot reach its rootfs {rootfs}: {dir} is mode {mode:04o}, owner {owner}, so that uid may not search it; make it searchable (chmod o+x {dir}) or choose a CVMD_STATE_DIR whose parent directories others may search (Kubernetes' emptyDir and /run are)")]
pub struct Unreachable {
    pub uid: u32,
    pub rootfs: PathBuf,
    pub dir: PathBuf,
    pub mode: u32,
    pub owner: u32,
}

/// The one directory's facts the rule needs.
#[derive(Debug, Clone, Copy)]
pub struct DirFacts {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Whether `uid`/`gid` (no supplementary groups: the runtime's init has
/// none yet) may search a directory, by its permission bits.
pub fn may_search(dir: DirFacts, uid: u32, gid: u32) -> bool {
    let bit = if dir.uid == uid {
        0o100
    } else if dir.gid == gid {
        0o010
    } else {
        0o001
    };
    dir.mode & bit != 0
}

/// Checks every directory above `rootfs` for the mapped root of `idmap`.
/// Without a mapping the runtime's init is the node's root, which searches
/// anything.
pub fn check(rootfs: &Path, idmap: Option<IdMap>) -> Result<(), Unreachable> {
    let Some(map) = idmap else {
        return Ok(());
    };
    for dir in rootfs.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let facts = DirFacts {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        };
        if !may_search(facts, map.host_uid, map.host_gid) {
            return Err(Unreachable {
                uid: map.host_uid,
                rootfs: rootfs.to_path_buf(),
                dir: dir.to_path_buf(),
                mode: facts.mode,
                owner: facts.uid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_is_judged_by_owner_group_or_others() {
        let root_0700 = DirFacts {
            mode: 0o700,
            uid: 0,
            gid: 0,
        };
        let root_0711 = DirFacts {
            mode: 0o711,
            uid: 0,
            gid: 0,
        };
        let mapped_0700 = DirFacts {
            mode: 0o700,
            uid: 100_000,
            gid: 100_000,
        };
        let group_0750 = DirFacts {
            mode: 0o750,
            uid: 0,
            gid: 100_000,
        };
        assert!(!may_search(root_0700, 100_000, 100_000));
        assert!(may_search(root_0711, 100_000, 100_000));
        assert!(may_search(mapped_0700, 100_000, 100_000));
        assert!(may_search(group_0750, 100_000, 100_000));
        // The owner's bits decide for the owner, even when others may.
        let owner_denied = DirFacts {
            mode: 0o011,
            uid: 100_000,
            gid: 0,
        };
        assert!(!may_search(owner_denied, 100_000, 100_000));
    }

    #[test]
    fn the_first_blocking_parent_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        let rootfs = closed.join("ws/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let map = IdMap {
            host_uid: 100_000,
            host_gid: 100_000,
            size: 65_536,
        };
        let e = check(&rootfs, Some(map)).unwrap_err();
        assert_eq!(e.dir, closed);
        assert!(e.to_string().contains("chmod o+x"), "{e}");
        assert!(
            check(&rootfs, None).is_ok(),
            "the node's root reaches anything"
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(check(&rootfs, Some(map)).is_ok());
    }
}
