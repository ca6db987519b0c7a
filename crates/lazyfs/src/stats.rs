//! Counters for `cvmctl status` and metrics, updated lock-free by the
//! read workers.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one mount.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) compressed_bytes_fetched: AtomicU64,
    pub(crate) chunks_fetched: AtomicU64,
    pub(crate) chunks_read_ahead: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) failed_reads: AtomicU64,
    pub(crate) files_present: AtomicU64,
    pub(crate) files_total: u64,
}

/// The counters at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Uncompressed bytes of the chunks this mount fetched from its source.
    pub bytes_fetched: u64,
    /// The same chunks' compressed spans (`compressed_len`), what the
    /// registry sent.
    pub compressed_bytes_fetched: u64,
    /// Chunks fetched from the source (not found in the node's cache).
    pub chunks_fetched: u64,
    /// Of those, the ones fetched beside a chunk a read needed, in the
    /// same request, before any read asked for them.
    pub chunks_read_ahead: u64,
    /// Chunk reads served from the node's cache.
    pub cache_hits: u64,
    /// Reads answered with EIO.
    pub failed_reads: u64,
    /// Regular files all of whose chunks this mount has read or fetched
    /// (empty files count from the start).
    pub files_present: u64,
    /// Regular files in the tree.
    pub files_total: u64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_fetched: get(&self.bytes_fetched),
            compressed_bytes_fetched: get(&self.compressed_bytes_fetched),
            chunks_fetched: get(&self.chunks_fetched),
            chunks_read_ahead: get(&self.chunks_read_ahead),
            cache_hits: get(&self.cache_hits),
            failed_reads: get(&self.failed_reads),
            files_present: get(&self.files_present),
            files_total: self.files_total,
        }
    }
}
