//! Host ID ranges for user-namespaced workspaces, one per workspace on the
//! node, so that a process escaping one workspace owns nothing of another's
//! (sysbox by default gives every container the same range). Kept in the
//! shared cache dir under a lock, so concurrent cvmd agree.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{io_err, StoreError};
use cvmd_rootfs::IdMap;

/// The first host ID handed out: below it are the host's own users.
pub const FIRST_HOST_ID: u32 = 100_000;
/// Each workspace's range: the sysbox contract's minimum.
pub const RANGE_SIZE: u32 = 65_536;
/// Ranges up to u32::MAX, minus the overflow ID's neighbourhood.
const MAX_RANGES: u32 = (u32::MAX - FIRST_HOST_ID) / RANGE_SIZE - 1;

/// This process's holds on the ranges it allocated: the open, locked
/// files of `idranges.d/`. A hold lasts as long as the process (one cvmd,
/// one workspace) unless released, so it is kept here rather than in every
/// caller between the allocation and the workspace's end.
static HELD: std::sync::Mutex<BTreeMap<PathBuf, File>> = std::sync::Mutex::new(BTreeMap::new());

fn hold_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir
        .join("idranges.d")
        .join(format!("{}.lock", super::identity_file_name(name)))
}

/// The range of workspace identity `name`: the one it had, else the lowest
/// free one, else one whose workspace is not running (the least recently
/// used such). The range is held while this process runs, so no other
/// workspace can take it over.
pub async fn allocate(cache_dir: &Path, name: &str) -> Result<IdMap, StoreError> {
    let _lock = super::lock::lock_file(&cache_dir.join("idranges.lock"), || {}).await?;
    let hold = take_hold(cache_dir, name)?;
    let path = cache_dir.join("idranges.json");
    let mut table = load(&path)?;
    let slot = match table.get(name) {
        Some(slot) => *slot,
        None => {
            let slot = match free_slot(&table) {
                Some(slot) => slot,
                None => reclaim(cache_dir, &mut table).ok_or_else(|| StoreError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(format!(
                        "all {MAX_RANGES} host ID ranges belong to running workspaces; run fewer workspaces on this node"
                    )),
                })?,
            };
            table.insert(name.to_string(), slot);
            save(&path, &table)?;
            slot
        }
    };
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(hold_path(cache_dir, name), hold);
    let base = FIRST_HOST_ID + slot * RANGE_SIZE;
    Ok(IdMap {
        host_uid: base,
        host_gid: base,
        size: RANGE_SIZE,
    })
}

/// The lock that says workspace `name` runs; this process may already
/// hold it (a second allocation of the same workspace).
fn take_hold(cache_dir: &Path, name: &str) -> Result<File, StoreError> {
    let path = hold_path(cache_dir, name);
    if let Some(file) = HELD.lock().unwrap_or_else(|p| p.into_inner()).remove(&path) {
        return Ok(file);
    }
    super::create_private_dir(path.parent().expect("under idranges.d"))?;
    let file = super::lock::open(&path)?;
    if !super::lock::try_lock(&file, super::lock::Mode::Exclusive).map_err(io_err(&path))? {
        return Err(StoreError::LeaseHeld {
            name: name.to_string(),
            path,
        });
    }
    // Marks when the range was last used, for reclaiming the oldest.
    let _ = file.set_modified(std::time::SystemTime::now());
    Ok(file)
}

fn free_slot(table: &BTreeMap<String, u32>) -> Option<u32> {
    let used: std::collections::BTreeSet<u32> = table.values().copied().collect();
    (0..MAX_RANGES).find(|s| !used.contains(s))
}

/// Takes the range of the least recently used workspace that is not
/// running (its hold is free): it ended without releasing it (killed, or a
/// pod deleted while stopped) and may never come back.
fn reclaim(cache_dir: &Path, table: &mut BTreeMap<String, u32>) -> Option<u32> {
    let (name, _) = table
        .keys()
        .filter_map(|name| {
            let path = hold_path(cache_dir, name);
            if super::lock::is_held(&path) {
                return None;
            }
            let used = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            Some((name.clone(), used))
        })
        .min_by_key(|(_, used)| *used)?;
    tracing::info!(workspace = %name, "reusing the host ID range of a workspace that is not running");
    let _ = std::fs::remove_file(hold_path(cache_dir, &name));
    table.remove(&name)
}

/// Frees the range of a workspace that is gone for good (it ended with
/// status 0: the pod is done, Kubernetes will not restart it).
pub async fn release(cache_dir: &Path, name: &str) -> Result<(), StoreError> {
    let _lock = super::lock::lock_file(&cache_dir.join("idranges.lock"), || {}).await?;
    let path = cache_dir.join("idranges.json");
    let mut table = load(&path)?;
    if table.remove(name).is_some() {
        save(&path, &table)?;
    }
    let hold = hold_path(cache_dir, name);
    let held = HELD.lock().unwrap_or_else(|p| p.into_inner()).remove(&hold);
    // Unlinked while still locked (if this process held it), so no other
    // process ever sees the file unlocked and thinks the workspace stopped.
    if held.is_some() || !super::lock::is_held(&hold) {
        let _ = std::fs::remove_file(&hold);
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
    let dir = path.parent().expect("in the cache dir");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut tmp = tempfile::Builder::new()
            .prefix(".idranges.")
            .tempfile_in(dir)?;
        tmp.write_all(&serde_json::to_vec_pretty(table).expect("plain map"))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(io_err(path))
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
        assert!(!hold_path(dir.path(), "a").exists());
        assert_eq!(
            allocate(dir.path(), "c").await.unwrap(),
            a,
            "a freed range is reused"
        );
    }

    #[tokio::test]
    async fn a_running_workspace_keeps_its_range_and_a_stopped_one_can_lose_it() {
        let dir = tempfile::tempdir().unwrap();
        // A full table: every range but one taken by workspaces that are
        // not running (no hold), the last by one that is.
        let table: BTreeMap<String, u32> = (0..MAX_RANGES).map(|s| (format!("w{s}"), s)).collect();
        save(&dir.path().join("idranges.json"), &table).unwrap();
        let running = hold_path(dir.path(), "w7");
        std::fs::create_dir_all(running.parent().unwrap()).unwrap();
        let other_pod = super::super::lock::open(&running).unwrap();
        assert!(
            super::super::lock::try_lock(&other_pod, super::super::lock::Mode::Exclusive).unwrap()
        );
        // Another pod runs w7: this process cannot run it too.
        assert!(matches!(
            allocate(dir.path(), "w7").await,
            Err(StoreError::LeaseHeld { .. })
        ));
        let fresh = allocate(dir.path(), "new").await.unwrap();
        let table = load(&dir.path().join("idranges.json")).unwrap();
        assert_eq!(u32::try_from(table.len()).unwrap(), MAX_RANGES);
        assert_eq!(table["w7"], 7, "the running workspace keeps its range");
        assert_ne!(fresh.host_uid, FIRST_HOST_ID + 7 * RANGE_SIZE);
    }
}
