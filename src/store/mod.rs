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

pub use ingest::{BlobWriter, IngestGuard};

use std::path::{Path, PathBuf};

use crate::digest::Digest;

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
        for dir in [
            store.blobs_dir(),
            store.ingest_dir(),
            store.root.join("images"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
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
        // A unique temp name: several processes may store the same config.
        let tmp = self
            .ingest_dir()
            .join(format!("{}.small.{}", digest.hex(), std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.blob_path(digest))?;
            sync_dir(&self.blobs_dir())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::Io {
                path: self.blob_path(digest),
                source: e,
            }
        })
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
