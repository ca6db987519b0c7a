//! The layer cache: each layer unpacked once per node into
//! `<cache>/layers/sha256/<diff_id>/root` (overlay form, read-only by
//! convention: it is only ever an overlay lowerdir or a copy source),
//! published by an atomic rename after everything in it reached the disk.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, lock, sync_dir, StoreError};
use cvmd_digest::Digest;

/// Written last into a staged layer: a layer dir without it is not a layer.
const MARKER: &str = "layer.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    /// The compressed blob it was unpacked from.
    pub blob: Digest,
    pub entries: u64,
    pub file_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
}

impl LayerCache {
    pub fn open(cache_dir: &Path) -> Result<Self, StoreError> {
        let cache = LayerCache {
            root: cache_dir.join("layers"),
        };
        for dir in [
            cache.published_dir(),
            cache.staging_dir(),
            cache.locks_dir(),
        ] {
            super::create_private_dir(&dir)?;
        }
        Ok(cache)
    }

    fn published_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }
    fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }
    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The layer's directory (holding `root/` and the marker).
    pub fn dir(&self, diff_id: &Digest) -> PathBuf {
        self.published_dir().join(diff_id.hex())
    }

    /// The unpacked tree: what overlay mounts as a lowerdir.
    pub fn tree(&self, diff_id: &Digest) -> PathBuf {
        self.dir(diff_id).join("root")
    }

    /// What a published layer was recorded with (its unpacked size);
    /// None when it is not published or its record is unreadable.
    pub fn meta(&self, diff_id: &Digest) -> Option<LayerMeta> {
        let bytes = std::fs::read(self.dir(diff_id).join(MARKER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn has(&self, diff_id: &Digest) -> bool {
        self.dir(diff_id).join(MARKER).is_file()
    }

    pub fn lock_path(&self, diff_id: &Digest) -> PathBuf {
        self.locks_dir().join(format!("{}.lock", diff_id.hex()))
    }

    /// Published layers, by diff_id.
    pub fn list(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.published_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Ok(d) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Takes the node-wide lock on one layer's unpacking.
    pub async fn lock(
        &self,
        diff_id: &Digest,
        on_wait: impl FnOnce(),
    ) -> Result<LayerGuard, StoreError> {
        let file = lock::lock_file(&self.lock_path(diff_id), on_wait).await?;
        Ok(LayerGuard {
            _lock: file,
            cache: self.clone(),
            diff_id: diff_id.clone(),
        })
    }

    /// Removes a published layer (gc). The caller holds its lock.
    pub fn remove(&self, _guard: &LayerGuard, diff_id: &Digest) -> Result<(), StoreError> {
        let dir = self.dir(diff_id);
        // Unpublish first (the marker), so a crash mid-removal leaves no
        // half-layer that looks whole.
        match std::fs::remove_file(dir.join(MARKER)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        remove_tree(&dir)
    }
}

/// The lock on one layer: while held, no other process unpacks or removes it.
#[derive(Debug)]
pub struct LayerGuard {
    _lock: File,
    cache: LayerCache,
    diff_id: Digest,
}

impl LayerGuard {
    pub fn already_unpacked(&self) -> bool {
        self.cache.has(&self.diff_id)
    }

    /// A fresh, empty staging dir for this layer. Leftovers of this layer
    /// from a crashed process are removed first: holding the lock proves
    /// nobody is still writing them.
    pub fn staging(&self) -> Result<Staging, StoreError> {
        let staging = self.cache.staging_dir();
        let prefix = format!("{}.", self.diff_id.hex());
        for entry in std::fs::read_dir(&staging).map_err(io_err(&staging))? {
            let entry = entry.map_err(io_err(&staging))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                tracing::info!(path = %entry.path().display(), "removing a half-unpacked layer left by an earlier run");
                remove_tree(&entry.path())?;
            }
        }
        // A published layer dir without its marker is also a leftover.
        let published = self.cache.dir(&self.diff_id);
        if published.exists() && !self.already_unpacked() {
            remove_tree(&published)?;
        }
        let dir = staging.join(format!("{prefix}{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Staging {
            dir,
            target: published,
            published: false,
        })
    }
}

/// A layer being unpacked; removed on drop unless published.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Staging {
    /// Where the unpacker writes.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Flushes the whole file system once (cheaper than an fsync per file),
    /// writes the marker, and renames the layer into place.
    pub fn publish(mut self, meta: &LayerMeta) -> Result<(), StoreError> {
        let dir = File::open(&self.dir).map_err(io_err(&self.dir))?;
        rustix::fs::syncfs(&dir).map_err(|e| io_err(&self.dir)(e.into()))?;
        let marker = self.dir.join(MARKER);
        let json = serde_json::to_vec_pretty(meta).expect("plain struct");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = File::create(&marker)?;
            f.write_all(&json)?;
            f.sync_all()
        };
        write().map_err(io_err(&marker))?;
        std::fs::rename(&self.dir, &self.target).map_err(io_err(&self.target))?;
        self.published = true;
        let parent = self.target.parent().expect("layer dirs have a parent");
        sync_dir(parent).map_err(io_err(parent))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            if let Err(e) = remove_tree(&self.dir) {
                tracing::warn!(error = %e, "cannot remove a failed layer's staging dir; the next run will");
            }
        }
    }
}

/// Removes a tree that may hold read-only directories and files with the
/// immutable look of a rootfs. Never follows symlinks (remove_dir_all does
/// not).
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // Without CAP_DAC_OVERRIDE a 0555 dir inside stops removal:
            // make dirs writable and try once more.
            make_dirs_writable(path);
            std::fs::remove_dir_all(path).map_err(io_err(path))
        }
    }
}

fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
    );
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(d: &Digest) -> LayerMeta {
        LayerMeta {
            diff_id: d.clone(),
            blob: d.clone(),
            entries: 1,
            file_bytes: 1,
        }
    }

    #[tokio::test]
    async fn a_layer_is_visible_only_once_published() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(dir.path()).unwrap();
        let d = Digest::of(b"layer");
        let guard = cache.lock(&d, || {}).await.unwrap();
        let staging = guard.staging().unwrap();
        std::fs::write(staging.root().join("f"), b"x").unwrap();
        assert!(!cache.has(&d));
        staging.publish(&meta(&d)).unwrap();
        assert!(cache.has(&d));
        assert_eq!(std::fs::read(cache.tree(&d).join("f")).unwrap(), b"x");
        assert_eq!(cache.list().unwrap(), vec![d.clone()]);
        cache.remove(&guard, &d).unwrap();
        assert!(!cache.has(&d) && !cache.dir(&d).exists());
    }

    #[tokio::test]
    async fn leftovers_of_a_crash_are_removed_and_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(dir.path()).unwrap();
        let d = Digest::of(b"layer");
        // A crash mid-unpack leaves a staging dir; one before the marker
        // was written but after a rename cannot happen (marker first), but
        // a marker-less published dir is treated as garbage anyway.
        let stale = dir
            .path()
            .join("layers/staging")
            .join(format!("{}.999999", d.hex()));
        std::fs::create_dir_all(stale.join("root")).unwrap();
        std::fs::create_dir_all(cache.tree(&d)).unwrap();
        assert!(!cache.has(&d));
        let guard = cache.lock(&d, || {}).await.unwrap();
        let staging = guard.staging().unwrap();
        assert!(!stale.exists());
        assert!(!cache.dir(&d).exists());
        drop(staging);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("layers/staging"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "a dropped staging dir is removed");
    }
}
