//! The node's chunk cache: verified chunks by digest, shared by every
//! cvmd on the node (each PID 1 of its own pod), so a span is fetched once
//! per node however many workspaces read it.
//!
//! ```text
//! <dir>/sha256/<hex>        a chunk's uncompressed bytes (arrives by rename)
//! <dir>/sha256/.tmp*        a chunk being written
//! <dir>/locks/<hex>.lock    held (flock) while the chunk is fetched
//! ```
//!
//! A chunk is stored only after its bytes matched its digest, written to a
//! temp file and renamed into place, so a reader sees all of it or none.
//! No fsync: after a power cut a chunk file may be short or empty, which a
//! reader takes for a miss (its length must equal the chunk's size) and
//! refetches; a longer-than-expected file is impossible for the same digest.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cvmd_digest::Digest;

use crate::source::FetchError;
use crate::tree::Chunk;

/// A chunk temp file older than this was left by a killed process.
const STALE_TMP: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("chunk cache {path}: {source} (is the node cache dir writable by root?)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why a chunk could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("fetched bytes do not match the chunk's digest (got {got}, {len} bytes); not cached")]
    Corrupt { got: Digest, len: usize },
    #[error("chunk cache {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The failure of the fetch this read waited on.
    #[error("{0}")]
    Shared(String),
}

/// Where a chunk's bytes are.
#[derive(Debug)]
pub(crate) enum Got {
    /// In the cache, in this file.
    Hit(File),
    /// Just fetched (and stored).
    Fetched(Vec<u8>),
}

/// A chunk cache dir, opened by one process; cheap to share (`Arc`)
/// between mounts.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    chunks: PathBuf,
    locks: PathBuf,
    /// In-process single flight: one mutex per chunk being fetched,
    /// holding why the fetch failed, if it did.
    flights: Mutex<HashMap<Digest, Arc<Mutex<Option<String>>>>>,
    /// Chunks whose mtime this process already refreshed (first 8 bytes of
    /// the digest; a collision only skips one refresh).
    touched: Mutex<HashSet<u64>>,
}

impl ChunkCache {
    /// Opens (creating, mode 0700) the cache under `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        let chunks = dir.join("sha256");
        let locks = dir.join("locks");
        for d in [&dir, &chunks, &locks] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io_err(d))?;
        }
        Ok(ChunkCache {
            dir,
            chunks,
            locks,
            flights: Mutex::default(),
            touched: Mutex::default(),
        })
    }

    /// The cache's root dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk_path(&self, digest: &Digest) -> PathBuf {
        self.chunks.join(digest.hex())
    }

    /// The cached chunk, if it is there whole.
    pub(crate) fn lookup(&self, chunk: &Chunk) -> Option<File> {
        let file = File::open(self.chunk_path(&chunk.digest)).ok()?;
        if file.metadata().ok()?.len() != chunk.size {
            return None;
        }
        self.touch(&file, &chunk.digest);
        Some(file)
    }

    /// Marks a chunk recently used for [`gc`], once per process: the
    /// cache's filesystem may be mounted noatime, and an mtime update per
    /// read would cost a syscall per read.
    fn touch(&self, file: &File, digest: &Digest) {
        let key = u64::from_str_radix(&digest.hex()[..16], 16).unwrap_or(0);
        if self.touched.lock().expect("touched lock").insert(key) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// The chunk from the cache, or fetched by `fetch`, verified and
    /// stored. Concurrent callers for one chunk, in this process or any
    /// other on the node, fetch it once: the others wait and then find it.
    pub(crate) fn get_or_fetch(
        &self,
        chunk: &Chunk,
        fetch: impl FnOnce() -> Result<Vec<u8>, FetchError>,
    ) -> Result<Got, ChunkError> {
        let flight = {
            let mut flights = self.flights.lock().expect("flights lock");
            flights.entry(chunk.digest.clone()).or_default().clone()
        };
        let result = {
            let mut failed = flight.lock().unwrap_or_else(|e| e.into_inner());
            match failed.as_ref() {
                // Readers that waited on a failed fetch share its failure
                // rather than each waiting out the source's deadline again;
                // the next read after them tries afresh.
                Some(why) => Err(ChunkError::Shared(why.clone())),
                None => self.fetch_locked(chunk, fetch).inspect_err(|e| {
                    *failed = Some(e.to_string());
                }),
            }
        };
        let mut flights = self.flights.lock().expect("flights lock");
        // Two holders (the map and us) means nobody else waits on it; a
        // new waiter could only clone it under the map lock we hold.
        if Arc::strong_count(&flight) == 2 {
            flights.remove(&chunk.digest);
        }
        result
    }

    fn fetch_locked(
        &self,
        chunk: &Chunk,
        fetch: impl FnOnce() -> Result<Vec<u8>, FetchError>,
    ) -> Result<Got, ChunkError> {
        if let Some(f) = self.lookup(chunk) {
            return Ok(Got::Hit(f));
        }
        let lock_path = self.lock_path(&chunk.digest);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ChunkError::Io { path, source }
        };
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // flock: held by the open file, so it keeps out other processes
        // (each their own pod's PID 1) and is released if we are killed.
        lock.lock().map_err(io(&lock_path))?;
        if let Some(f) = self.lookup(chunk) {
            return Ok(Got::Hit(f));
        }
        let bytes = fetch()?;
        self.verify_and_store(chunk, &bytes)?;
        Ok(Got::Fetched(bytes))
    }

    fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.locks.join(format!("{}.lock", digest.hex()))
    }

    /// Checks `bytes` against the chunk's digest and size, then stores
    /// them; the caller holds the chunk's lock.
    fn verify_and_store(&self, chunk: &Chunk, bytes: &[u8]) -> Result<(), ChunkError> {
        let got = Digest::of(bytes);
        if got != chunk.digest || u64::try_from(bytes.len()) != Ok(chunk.size) {
            return Err(ChunkError::Corrupt {
                got,
                len: bytes.len(),
            });
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ChunkError::Io { path, source }
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.chunks)
            .map_err(io(&self.chunks))?;
        tmp.write_all(bytes).map_err(io(tmp.path()))?;
        let path = self.chunk_path(&chunk.digest);
        tmp.persist(&path).map_err(|e| ChunkError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Takes the chunk's lock for a read-ahead if it is free and the chunk
    /// is not cached: `None` when it is cached, being fetched (its lock is
    /// held, in this process or another on the node), or the lock cannot
    /// be had at all. Never waits, so a read-ahead never holds up a read.
    pub(crate) fn try_claim(&self, chunk: &Chunk) -> Option<Claim> {
        if self.lookup(chunk).is_some() {
            return None;
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path(&chunk.digest))
            .ok()?;
        // The same flock `fetch_locked` waits on: a reader of this chunk
        // in any process waits for the claim, then finds the chunk.
        lock.try_lock().ok()?;
        if self.lookup(chunk).is_some() {
            return None;
        }
        Some(Claim { _lock: lock })
    }

    /// Verifies and stores a claimed chunk, then lets the claim go.
    pub(crate) fn store_claimed(
        &self,
        claim: Claim,
        chunk: &Chunk,
        bytes: &[u8],
    ) -> Result<(), ChunkError> {
        let stored = self.verify_and_store(chunk, bytes);
        drop(claim);
        stored
    }
}

/// A chunk's lock, held from a read-ahead's choice of the chunk until it
/// is stored or given up (dropping it releases the lock).
#[derive(Debug)]
pub(crate) struct Claim {
    _lock: File,
}

/// What [`gc`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    /// Bytes the cache still holds.
    pub kept_bytes: u64,
    /// Chunks over the budget kept because a fetch held them.
    pub skipped_locked: u64,
}

/// Bounds the chunk cache under `dir` to `budget` bytes: removes least
/// recently used chunks (oldest mtime) until the rest fit, skipping any
/// whose lock another process holds (being fetched), and temp files left
/// by killed processes. A process already reading a removed chunk keeps
/// reading it (the open file outlives the name); one about to open it
/// finds it missing and fetches it again.
pub fn gc(dir: &Path, budget: u64) -> Result<GcReport, CacheError> {
    let chunks = dir.join("sha256");
    let locks = dir.join("locks");
    let mut report = GcReport::default();
    let mut all = Vec::new();
    let entries = match fs::read_dir(&chunks) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io_err(&chunks)(e)),
    };
    let now = SystemTime::now();
    for entry in entries {
        let entry = entry.map_err(io_err(&chunks))?;
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name();
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if name.as_encoded_bytes().starts_with(b".tmp") {
            if now.duration_since(mtime).unwrap_or_default() > STALE_TMP {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        all.push((mtime, meta.size(), name));
    }
    all.sort();
    let mut total: u64 = all.iter().map(|(_, size, _)| size).sum();
    for (_, size, name) in all {
        if total <= budget {
            break;
        }
        let lock_path = locks.join(format!("{}.lock", name.to_string_lossy()));
        // Held while we unlink, so no fetch of this chunk is between its
        // "not cached" and its rename.
        let lock = match File::options().write(true).open(&lock_path) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(f),
                Err(fs::TryLockError::WouldBlock) => {
                    report.skipped_locked += 1;
                    continue;
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
            },
            Err(_) => None,
        };
        match fs::remove_file(chunks.join(&name)) {
            Ok(()) => {
                report.removed_chunks += 1;
                report.removed_bytes += size;
                total -= size;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => total -= size,
            Err(e) => return Err(io_err(&chunks.join(&name))(e)),
        }
        if lock.is_some() {
            // A process that opened this lock file before the unlink and
            // waits on it may fetch the chunk once more beside a process
            // that creates a new lock file: a duplicate fetch of identical
            // bytes, never a wrong chunk. Keeping every lock file forever
            // would be the alternative.
            let _ = fs::remove_file(&lock_path);
        }
    }
    report.kept_bytes = total;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn chunk(bytes: &[u8]) -> Chunk {
        Chunk {
            file_offset: 0,
            size: bytes.len() as u64,
            blob_offset: 0,
            compressed_len: 0,
            inner_offset: 0,
            digest: Digest::of(bytes),
        }
    }

    #[test]
    fn stores_verified_chunks_and_refuses_corrupt_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(tmp.path().join("c")).unwrap();
        let c = chunk(b"hello");
        assert!(cache.lookup(&c).is_none());
        let bad = cache.get_or_fetch(&c, || Ok(b"jello".to_vec()));
        assert!(matches!(bad, Err(ChunkError::Corrupt { .. })));
        assert!(cache.lookup(&c).is_none());
        let got = cache.get_or_fetch(&c, || Ok(b"hello".to_vec())).unwrap();
        assert!(matches!(got, Got::Fetched(ref b) if b == b"hello"));
        let again = cache.get_or_fetch(&c, || panic!("fetched a cached chunk"));
        assert!(matches!(again, Ok(Got::Hit(_))));
        assert_eq!(
            fs::read(tmp.path().join("c/sha256").join(c.digest.hex())).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_short_cached_file_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(tmp.path()).unwrap();
        let c = chunk(b"hello");
        fs::write(tmp.path().join("sha256").join(c.digest.hex()), b"").unwrap();
        assert!(cache.lookup(&c).is_none());
        cache.get_or_fetch(&c, || Ok(b"hello".to_vec())).unwrap();
        assert!(cache.lookup(&c).is_some());
    }

    #[test]
    fn concurrent_fetches_of_one_chunk_collapse() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Arc::new(ChunkCache::open(tmp.path()).unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let c = chunk(b"shared");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    cache
                        .get_or_fetch(&c, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(b"shared".to_vec())
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.flights.lock().unwrap().is_empty());
    }

    #[test]
    fn waiters_share_a_failed_fetch_and_the_next_read_retries() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(tmp.path()).unwrap();
        let calls = AtomicUsize::new(0);
        let c = chunk(b"flaky");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let r = cache.get_or_fetch(&c, || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Err(FetchError::msg("registry down"))
                    });
                    assert!(r.unwrap_err().to_string().contains("registry down"));
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache.get_or_fetch(&c, || Ok(b"flaky".to_vec())).unwrap();
    }

    /// Two caches on one dir have their own open files, so they exclude
    /// each other by flock exactly as two processes do.
    #[test]
    fn two_openers_of_one_dir_fetch_a_chunk_once() {
        let tmp = tempfile::tempdir().unwrap();
        let a = ChunkCache::open(tmp.path()).unwrap();
        let b = ChunkCache::open(tmp.path()).unwrap();
        let calls = AtomicUsize::new(0);
        let c = chunk(b"node-wide");
        std::thread::scope(|s| {
            for cache in [&a, &b, &a, &b] {
                s.spawn(|| {
                    cache
                        .get_or_fetch(&c, || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                            Ok(b"node-wide".to_vec())
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_claim_is_had_only_for_an_uncached_chunk_nobody_fetches() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(tmp.path()).unwrap();
        let other = ChunkCache::open(tmp.path()).unwrap();
        let c = chunk(b"neighbour");
        let claim = cache.try_claim(&c).expect("free and uncached");
        // Held: not for a second read-ahead, here or in another process.
        assert!(cache.try_claim(&c).is_none());
        assert!(other.try_claim(&c).is_none());
        let bad = cache.store_claimed(claim, &c, b"neighbouR");
        assert!(matches!(bad, Err(ChunkError::Corrupt { .. })));
        assert!(cache.lookup(&c).is_none());
        // Given up with the failed store: free again.
        let claim = other.try_claim(&c).expect("released");
        other.store_claimed(claim, &c, b"neighbour").unwrap();
        assert!(cache.lookup(&c).is_some());
        assert!(cache.try_claim(&c).is_none(), "cached");
    }

    #[test]
    fn a_read_waits_for_a_claimed_chunk_and_finds_it_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(tmp.path()).unwrap();
        let c = chunk(b"read ahead");
        let claim = cache.try_claim(&c).unwrap();
        std::thread::scope(|s| {
            let reader = s.spawn(|| cache.get_or_fetch(&c, || panic!("fetched a claimed chunk")));
            std::thread::sleep(Duration::from_millis(100));
            cache.store_claimed(claim, &c, b"read ahead").unwrap();
            assert!(matches!(reader.join().unwrap(), Ok(Got::Hit(_))));
        });
    }

    #[test]
    fn gc_removes_least_recently_used_beyond_the_budget_but_not_locked_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(tmp.path()).unwrap();
        let locked = chunk(b"locked-lock");
        let old = chunk(b"old-old-old");
        let new = chunk(b"new-new-new");
        let t0 = SystemTime::now() - Duration::from_secs(100);
        let all: [(&Chunk, &[u8]); 3] = [
            (&locked, b"locked-lock"),
            (&old, b"old-old-old"),
            (&new, b"new-new-new"),
        ];
        for (i, (c, bytes)) in all.into_iter().enumerate() {
            cache.get_or_fetch(c, || Ok(bytes.to_vec())).unwrap();
            File::options()
                .write(true)
                .open(cache.chunk_path(&c.digest))
                .unwrap()
                .set_modified(t0 + Duration::from_secs(i as u64))
                .unwrap();
        }
        let held = File::create(
            tmp.path()
                .join(format!("locks/{}.lock", locked.digest.hex())),
        )
        .unwrap();
        held.lock().unwrap();
        // Oldest first: the locked chunk is skipped, the next one goes.
        let report = gc(tmp.path(), 22).unwrap();
        assert_eq!(report.removed_chunks, 1, "{report:?}");
        assert_eq!(report.skipped_locked, 1, "{report:?}");
        assert!(!cache.chunk_path(&old.digest).exists());
        assert!(cache.chunk_path(&locked.digest).exists());
        assert!(cache.chunk_path(&new.digest).exists());
        drop(held);
        let report = gc(tmp.path(), 0).unwrap();
        assert_eq!(report.removed_chunks, 2);
        assert_eq!(report.kept_bytes, 0);
    }
}
