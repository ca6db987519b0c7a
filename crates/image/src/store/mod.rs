//! The node-wide content store: verified blobs under `<cache>/blobs/sha256/`,
//! downloads in progress under `<cache>/ingest/`, shared by every cvmd on the
//! node through file locks.

pub mod fs_check;
pub mod gc;
pub mod idranges;
pub mod images;
mod ingest;
pub mod layers;
pub mod lease;
pub mod lock;
pub mod writeback;

pub use ingest::{BlobWriter, IngestGuard};

use std::path::{Path, PathBuf};

use cvmd_digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("content store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: received {actual} bytes, expected {expected}; nothing was stored")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("another cvmd on this node holds the lease of workspace {name:?} ({path}): two pods share one workspace identity; give each its own CVMD_WORKSPACE, and set CVMD_POD_NAMESPACE from the pod's namespace")]
    LeaseHeld { name: String, path: PathBuf },
    #[error("{what}: content has digest {actual}, expected {expected}; nothing was stored")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `cache_dir`.
    pub fn open(cache_dir: &Path) -> Result<Self, StoreError> {
        let store = ContentStore {
            root: cache_dir.to_path_buf(),
        };
        create_private_dir(&store.root)?;
        for dir in [
            store.blobs_dir(),
            store.ingest_dir(),
            store.root.join("images"),
        ] {
            create_private_dir(&dir)?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The records of pulled images, beside the blobs.
    pub fn images(&self) -> images::ImageIndex {
        images::ImageIndex::open(&self.root).expect("created by open")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where a verified blob lives. Only complete, verified blobs are ever
    /// at this path (they arrive by rename).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(io_err(&path))
    }

    /// Stores a small blob held in memory (manifests, configs) after
    /// checking its digest.
    pub fn put_small(&self, digest: &Digest, bytes: &[u8], what: &str) -> Result<(), StoreError> {
        if self.has_blob(digest) {
            return Ok(());
        }
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                what: what.to_string(),
                expected: digest.clone(),
                actual,
            });
        }
        // A temp name unique on the node (not the pid: every cvmd is PID 1
        // of its own pod), and never renamed over a blob another process
        // published meanwhile: that one is already verified.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut tmp = tempfile::Builder::new()
                .prefix(&format!("{}.small.", digest.hex()))
                .tempfile_in(self.ingest_dir())?;
            tmp.write_all(bytes)?;
            tmp.as_file().sync_all()?;
            match tmp.persist_noclobber(self.blob_path(digest)) {
                Ok(_) => sync_dir(&self.blobs_dir()),
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e.error),
            }
        };
        write().map_err(io_err(&self.blob_path(digest)))
    }

    /// Takes the node-wide lock on one blob's download, waiting (polling,
    /// so the async runtime is not blocked) while another process holds it.
    /// `on_wait` is called once if we had to wait.
    pub async fn lock_ingest(
        &self,
        digest: &Digest,
        on_wait: impl FnOnce(),
    ) -> Result<IngestGuard, StoreError> {
        let lock_path = self.ingest_dir().join(format!("{}.lock", digest.hex()));
        let file = lock::lock_file(&lock_path, on_wait).await?;
        Ok(IngestGuard::new(
            file,
            self.ingest_dir().join(format!("{}.partial", digest.hex())),
            self.blob_path(digest),
            self.blobs_dir(),
            digest.clone(),
        ))
    }
}

/// Creates `dir` (and missing parents) readable by root only, and narrows
/// an existing one to that: the cache holds every image's setuid binaries
/// and device-like files, which no other user of the node may reach.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// A file name for a workspace identity (`NAME` or `NAMESPACE/NAME`):
/// readable, and distinct for distinct identities (characters outside a
/// safe alphabet are folded, so a hash of the exact identity keeps `a/b`
/// and `a_b` apart).
pub(crate) fn identity_file_name(identity: &str) -> String {
    let safe: String = identity
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{}", &Digest::of(identity.as_bytes()).hex()[..12])
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_blobs_are_verified_before_they_are_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        let e = store.put_small(&d, b"HELLO", "config").unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }));
        assert!(!store.has_blob(&d));
        store.put_small(&d, b"hello", "config").unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn concurrent_writers_of_one_small_blob_all_succeed() {
        // Threads of one process share its pid, as cvmd processes that are
        // each PID 1 of their own pod do: names made from it collide.
        let body = vec![7u8; 64 << 10];
        let d = Digest::of(&body);
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let store = ContentStore::open(dir.path()).unwrap();
            std::thread::scope(|s| {
                let writers: Vec<_> = (0..6)
                    .map(|_| s.spawn(|| store.put_small(&d, &body, "config")))
                    .collect();
                for w in writers {
                    w.join().unwrap().unwrap();
                }
            });
            assert_eq!(store.read_blob(&d).unwrap(), body);
            let left: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    #[test]
    fn the_cache_is_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        ContentStore::open(&cache).unwrap();
        for d in [
            &cache,
            &cache.join("blobs"),
            &cache.join("blobs/sha256"),
            &cache.join("ingest"),
        ] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    use std::time::Duration;

    #[tokio::test]
    async fn a_second_locker_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"x");
        let first = store.lock_ingest(&d, || {}).await.unwrap();
        let store2 = store.clone();
        let d2 = d.clone();
        let waited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = waited.clone();
        let second = tokio::spawn(async move {
            store2
                .lock_ingest(&d2, || w.store(true, std::sync::atomic::Ordering::SeqCst))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap().unwrap();
        assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
    }
}
