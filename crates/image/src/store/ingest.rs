//! One blob's download into the store: a partial file that survives a crash
//! and is resumed (after re-hashing what it holds), verified size and
//! sha256, then fsync and an atomic rename into place.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::{io_err, sync_dir, StoreError};
use cvmd_digest::Digest;

/// Holds the node-wide lock on one blob's download; released on drop (the
/// flock goes with the file descriptor).
#[derive(Debug)]
pub struct IngestGuard {
    _lock: File,
    partial: PathBuf,
    target: PathBuf,
    blobs_dir: PathBuf,
    digest: Digest,
}

impl IngestGuard {
    pub(super) fn new(
        lock: File,
        partial: PathBuf,
        target: PathBuf,
        blobs_dir: PathBuf,
        digest: Digest,
    ) -> Self {
        IngestGuard {
            _lock: lock,
            partial,
            target,
            blobs_dir,
            digest,
        }
    }

    /// Another process may have finished while we waited for the lock.
    pub fn already_stored(&self) -> bool {
        self.target.is_file()
    }

    /// Opens the partial file for appending. What an earlier, interrupted
    /// download left is kept and re-hashed, unless it is longer than the blob
    /// can be. Blocking: call from a blocking thread.
    pub fn writer(self, expected_size: u64, what: &str) -> Result<BlobWriter, StoreError> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.partial)
            .map_err(io_err(&self.partial))?;
        let len = file.metadata().map_err(io_err(&self.partial))?.len();
        let mut hasher = Sha256::new();
        let mut offset = 0;
        if len > expected_size {
            file.set_len(0).map_err(io_err(&self.partial))?;
        } else if len > 0 {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(io_err(&self.partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err(&self.partial))?;
        Ok(BlobWriter {
            guard: self,
            file,
            hasher,
            offset,
            resumed_from: offset,
            expected_size,
            what: what.to_string(),
        })
    }
}

#[derive(Debug)]
pub struct BlobWriter {
    guard: IngestGuard,
    file: File,
    hasher: Sha256,
    offset: u64,
    resumed_from: u64,
    expected_size: u64,
    what: String,
}

impl BlobWriter {
    /// Bytes already on disk: where the next download must start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where this writer picked up an interrupted download (0 when fresh).
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// What an interrupted download left on disk, to be read again by
    /// whoever consumes the whole stream (the unpacker); None when fresh.
    pub fn prefix(&self) -> Result<Option<std::io::Take<File>>, StoreError> {
        if self.resumed_from == 0 {
            return Ok(None);
        }
        let file = File::open(&self.guard.partial).map_err(io_err(&self.guard.partial))?;
        Ok(Some(file.take(self.resumed_from)))
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let end = self.offset + chunk.len() as u64;
        if end > self.expected_size {
            // A registry that sends more than the descriptor's size is
            // refused before the excess reaches the disk.
            let actual = end;
            self.discard();
            return Err(StoreError::SizeMismatch {
                what: self.what.clone(),
                expected: self.expected_size,
                actual,
            });
        }
        self.file
            .write_all(chunk)
            .map_err(io_err(&self.guard.partial))?;
        self.hasher.update(chunk);
        self.offset = end;
        Ok(())
    }

    /// Starts over from byte 0 (the registry ignored a Range request, or a
    /// resumed prefix turned out bad).
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(io_err(&self.guard.partial))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.guard.partial))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.resumed_from = 0;
        Ok(())
    }

    /// Checks the digest of what was written so far against the blob's,
    /// when all of it arrived; a mismatch discards the partial file.
    pub fn verify(&mut self) -> Result<(), StoreError> {
        if self.offset != self.expected_size {
            return Ok(());
        }
        let actual = Digest::from_hasher(self.hasher.clone());
        if actual == self.guard.digest {
            return Ok(());
        }
        self.discard();
        Err(StoreError::DigestMismatch {
            what: self.what.clone(),
            expected: self.guard.digest.clone(),
            actual,
        })
    }

    /// Gives up on this download and removes what it wrote.
    pub fn abandon(mut self) {
        self.discard();
    }

    /// Keeps what was written for a later resume.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err(&self.guard.partial))
    }

    /// Verifies size and digest and publishes the blob by rename. On a
    /// mismatch the partial file is removed: nothing is stored.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.offset != self.expected_size {
            self.discard();
            return Err(StoreError::SizeMismatch {
                what: self.what.clone(),
                expected: self.expected_size,
                actual: self.offset,
            });
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.guard.digest {
            self.discard();
            return Err(StoreError::DigestMismatch {
                what: self.what.clone(),
                expected: self.guard.digest.clone(),
                actual,
            });
        }
        let g = &self.guard;
        self.file.sync_all().map_err(io_err(&g.partial))?;
        // Read-only: nothing may change a blob once it is named by its digest.
        use std::os::unix::fs::PermissionsExt;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(io_err(&g.partial))?;
        std::fs::rename(&g.partial, &g.target).map_err(io_err(&g.target))?;
        sync_dir(&g.blobs_dir).map_err(io_err(&g.blobs_dir))
    }

    fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.guard.partial);
        self.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::ContentStore;
    use super::*;

    async fn writer(store: &ContentStore, content: &[u8]) -> BlobWriter {
        let d = Digest::of(content);
        let g = store.lock_ingest(&d, || {}).await.unwrap();
        g.writer(content.len() as u64, "blob").unwrap()
    }

    #[tokio::test]
    async fn an_interrupted_write_resumes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let content = b"0123456789abcdef".repeat(1000);
        let mut w = writer(&store, &content).await;
        w.write(&content[..5000]).unwrap();
        w.flush().unwrap();
        drop(w); // as if the process died: the partial stays
        let mut w = writer(&store, &content).await;
        assert_eq!((w.offset(), w.resumed_from()), (5000, 5000));
        w.write(&content[5000..]).unwrap();
        w.commit().unwrap();
        assert_eq!(store.read_blob(&Digest::of(&content)).unwrap(), content);
    }

    #[tokio::test]
    async fn wrong_content_or_size_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let content = b"good content";
        let mut w = writer(&store, content).await;
        w.write(b"evil content").unwrap();
        assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
        let mut w = writer(&store, content).await;
        assert_eq!(w.offset(), 0, "the bad partial was removed");
        assert!(matches!(
            w.write(b"good content and more"),
            Err(StoreError::SizeMismatch { .. })
        ));
        drop(w); // shadowing would keep the lock held
        let w = writer(&store, content).await;
        assert!(matches!(w.commit(), Err(StoreError::SizeMismatch { .. })));
        assert!(!store.has_blob(&Digest::of(content)));
        let names: Vec<String> = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".lock")), "{names:?}");
    }

    #[tokio::test]
    async fn an_overlong_partial_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"abc");
        std::fs::write(
            dir.path()
                .join("ingest")
                .join(format!("{}.partial", d.hex())),
            b"abcdef",
        )
        .unwrap();
        let w = store
            .lock_ingest(&d, || {})
            .await
            .unwrap()
            .writer(3, "b")
            .unwrap();
        assert_eq!(w.offset(), 0);
    }
}
