//! Host ID ranges for user-namespaced workspaces, one per workspace on the
//! node, so that a process escaping one workspace owns nothing of another's
//! (sysbox by default gives every container the same range). Kept in the
//! shared cache dir under a lock, so concurrent cvmd agree.

use std::collections::BTreeMap;
use std::path::Path;

use super::{io_err, StoreError};
use crate::rootfs::IdMap;

/// The first host ID handed out: below it are the host's own users.
pub const FIRST_HOST_ID: u32 = 100_000;
/// Each workspace's range: the sysbox contract's minimum.
pub const RANGE_SIZE: u32 = 65_536;
/// Ranges up to u32::MAX, minus the overflow ID's neighbourhood.
const MAX_RANGES: u32 = (u32::MAX - FIRST_HOST_ID) / RANGE_SIZE - 1;

/// The range of workspace `name`: the one it had, or the lowest free one.
pub async fn allocate(cache_dir: &Path, name: &str) -> Result<IdMap, StoreError> {
    let _lock = super::lock::lock_file(&cache_dir.join("idranges.lock"), || {}).await?;
    let path = cache_dir.join("idranges.json");
    let mut table = load(&path)?;
    let slot = match table.get(name) {
        Some(slot) => *slot,
        None => {
            let used: std::collections::BTreeSet<u32> = table.values().copied().collect();
            let slot =
                (0..MAX_RANGES)
                    .find(|s| !used.contains(s))
                    .ok_or_else(|| StoreError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(
                            "every host ID range is taken; release workspaces with cvmd gc",
                        ),
                    })?;
            table.insert(name.to_string(), slot);
            save(&path, &table)?;
            slot
        }
    };
    let base = FIRST_HOST_ID + slot * RANGE_SIZE;
    Ok(IdMap {
        host_uid: base,
        host_gid: base,
        size: RANGE_SIZE,
    })
}

/// Frees the range of a workspace that is gone for good.
pub async fn release(cache_dir: &Path, name: &str) -> Result<(), StoreError> {
    let _lock = super::lock::lock_file(&cache_dir.join("idranges.lock"), || {}).await?;
    let path = cache_dir.join("idranges.json");
    let mut table = load(&path)?;
    if table.remove(name).is_some() {
        save(&path, &table)?;
    }
    Ok(())
}

fn load(path: &Path) -> Result<BTreeMap<String, u32>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "not a range table ({e}); remove it to start over"
            )),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn save(path: &Path, table: &BTreeMap<String, u32>) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(table).expect("plain map"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_workspace_gets_its_own_stable_range() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocate(dir.path(), "a").await.unwrap();
        let b = allocate(dir.path(), "b").await.unwrap();
        assert_eq!(a.host_uid, FIRST_HOST_ID);
        assert_eq!(b.host_uid, FIRST_HOST_ID + RANGE_SIZE);
        assert_eq!((a.size, a.host_gid), (RANGE_SIZE, a.host_uid));
        assert_eq!(
            allocate(dir.path(), "a").await.unwrap(),
            a,
            "stable across restarts"
        );
        release(dir.path(), "a").await.unwrap();
        assert_eq!(
            allocate(dir.path(), "c").await.unwrap(),
            a,
            "a freed range is reused"
        );
    }
}
