//! The read path, run on worker threads: a file range from the backing dir
//! when one is set, else from its chunks (cache first, then the source).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Condvar, Mutex, RwLock};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::cache::{ChunkCache, ChunkError, Got};
use crate::readahead::{BlobOrder, MAX_NEIGHBOURS};
use crate::source::{ChunkSource, FetchError};
use crate::stats::Stats;
use crate::tree::{Chunk, Kind, Node, Tree};

/// State shared by the FUSE session, the read workers and the
/// [`LazyHandle`](crate::LazyHandle)s.
#[derive(Debug)]
pub(crate) struct Inner {
    /// The mount's name in log lines (e.g. the layer's digest).
    pub name: String,
    pub tree: Tree,
    pub source: Arc<dyn ChunkSource>,
    pub cache: Arc<ChunkCache>,
    pub stats: Stats,
    pub fetches: Semaphore,
    /// Every chunk in blob order, and the read-ahead budget (compressed
    /// bytes per request); `None` when read-ahead is off.
    readahead: Option<(BlobOrder, u64)>,
    pub backing: RwLock<Option<Backing>>,
    /// Open file handles (the `fh` the kernel passes back on read).
    pub handles: Mutex<HashMap<u64, OpenFile>>,
    pub next_fh: AtomicU64,
    /// Per file not yet fully present: which chunks were served.
    present: Mutex<HashMap<u64, Vec<bool>>>,
    /// Set when unmounting begins: a read that fails from then on was cut
    /// by the stop (its reader gone, the fetch dropped), not a fault of
    /// the layer or the registry.
    pub closing: std::sync::atomic::AtomicBool,
}

/// The complete local copy of the layer, once there is one.
#[derive(Debug, Clone)]
pub(crate) struct Backing {
    /// Bumped by each `set_backing_dir`, so handles reopen their file.
    pub generation: u64,
    pub dir: Arc<OwnedFd>,
}

#[derive(Debug, Default)]
pub(crate) struct OpenFile {
    /// The backing file for the given generation; `None` if it could not
    /// be used (then this handle reads chunks).
    backing: Option<(u64, Option<Arc<File>>)>,
}

impl Inner {
    pub fn new(
        name: String,
        tree: Tree,
        source: Arc<dyn ChunkSource>,
        cache: Arc<ChunkCache>,
        max_fetches: usize,
        readahead_bytes: u64,
    ) -> Self {
        let mut files_total = 0;
        let mut files_present = 0;
        for n in &tree.nodes {
            if let Kind::File { chunks, .. } = &n.kind {
                files_total += 1;
                if chunks.is_empty() {
                    files_present += 1;
                }
            }
        }
        let readahead = (readahead_bytes > 0).then(|| (BlobOrder::new(&tree), readahead_bytes));
        Inner {
            name,
            closing: std::sync::atomic::AtomicBool::new(false),
            readahead,
            tree,
            source,
            cache,
            stats: Stats {
                files_total,
                files_present: AtomicU64::new(files_present),
                ..Stats::default()
            },
            fetches: Semaphore::new(max_fetches.max(1)),
            backing: RwLock::new(None),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            present: Mutex::default(),
        }
    }

    /// Bytes `offset..offset+len` of file `ino` (fewer at its end), or
    /// `Err` after one warn line naming the file and why.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>, ()> {
        let Some(node) = self.tree.node(ino) else {
            return Err(());
        };
        let Kind::File { size, chunks } = &node.kind else {
            return Err(());
        };
        let size = *size;
        if offset >= size {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(u64::from(len)));
        if let Some(bytes) = self.read_backing(node, size, fh, offset, end) {
            return Ok(bytes);
        }
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        let first = chunks.partition_point(|c| c.file_offset + c.size <= offset);
        for (i, c) in chunks.iter().enumerate().skip(first) {
            if c.file_offset >= end {
                break;
            }
            let lo = offset.max(c.file_offset) - c.file_offset;
            let hi = end.min(c.file_offset + c.size) - c.file_offset;
            if let Err(e) = self.chunk_range(c, lo, hi, &mut out) {
                if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::debug!(
                        "lazy layer {}: a read of {} was cut by the unmount: {e}",
                        self.name,
                        node.path.display()
                    );
                    return Err(());
                }
                Stats::add(&self.stats.failed_reads, 1);
                tracing::warn!(
                    chunk = %c.digest,
                    "lazy layer {}: reading {} failed (EIO) at its chunk {} (file bytes {}..{}): {e}",
                    self.name,
                    node.path.display(),
                    c.digest.short(),
                    c.file_offset,
                    c.file_offset + c.size,
                );
                return Err(());
            }
            self.mark_present(ino, i, chunks.len());
        }
        Ok(out)
    }

    /// Appends bytes `lo..hi` of `chunk` to `out`.
    fn chunk_range(
        &self,
        c: &Chunk,
        lo: u64,
        hi: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ChunkError> {
        let got = match self.cache.lookup(c) {
            Some(f) => Got::Hit(f),
            None => self.cache.get_or_fetch(c, || {
                let _permit = self.fetches.acquire();
                self.fetch_with_neighbours(c)
            })?,
        };
        match got {
            Got::Hit(f) => {
                Stats::add(&self.stats.cache_hits, 1);
                pread_into(&f, lo, hi, out).map_err(|source| ChunkError::Io {
                    path: self.cache.dir().join("sha256").join(c.digest.hex()),
                    source,
                })
            }
            Got::Fetched(bytes) => {
                Stats::add(&self.stats.chunks_fetched, 1);
                Stats::add(&self.stats.bytes_fetched, c.size);
                Stats::add(&self.stats.compressed_bytes_fetched, c.compressed_len);
                let (lo, hi) = (as_index(lo), as_index(hi));
                out.extend_from_slice(&bytes[lo..hi]);
                Ok(())
            }
        }
    }

    /// `c`'s bytes, fetched (under its lock) in one request with the
    /// uncached chunks after it in the blob, which are verified and stored
    /// for later reads. A neighbour that fails is not stored and does not
    /// fail this read; only `c`'s bytes are kept in memory.
    fn fetch_with_neighbours(&self, c: &Chunk) -> Result<Vec<u8>, FetchError> {
        let Some((order, budget)) = &self.readahead else {
            return self.source.fetch(c);
        };
        let mut run = Vec::new();
        let mut claims = Vec::new();
        let mut needed = None;
        for p in order.run(&self.tree, c, *budget) {
            if p.chunk.digest == c.digest {
                // `c` itself, or a copy of its bytes elsewhere: fetched once.
                if needed.is_none() {
                    needed = Some(run.len());
                    run.push(c.clone());
                    claims.push(None);
                }
                continue;
            }
            if claims.len() > MAX_NEIGHBOURS {
                break;
            }
            // A chunk twice in one run is claimed once: the second claim
            // finds the lock held.
            if let Some(claim) = self.cache.try_claim(p.chunk) {
                run.push(p.chunk.clone());
                claims.push(Some((claim, p)));
            } else if p.chunk.blob_offset != c.blob_offset {
                // Cached, or being fetched by another read (in this pod or
                // another of the node): the request stops before it, or its
                // span would carry those bytes again, unused. The chunks of
                // `c`'s own gzip member come with it whatever they are.
                break;
            }
        }
        let Some(needed) = needed else {
            // Not in the blob order (cannot happen for a chunk of this
            // tree): fetch it alone.
            return self.source.fetch(c);
        };
        if run.len() == 1 {
            return self.source.fetch(c);
        }
        let mut result = None;
        self.source.fetch_run(&run, &mut |i, got| {
            if i == needed {
                result = Some(got);
                return;
            }
            let Some((claim, p)) = claims.get_mut(i).and_then(Option::take) else {
                return;
            };
            let bytes = match got {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::debug!(chunk = %p.chunk.digest, "lazy layer {}: read-ahead fetch failed: {e}", self.name);
                    return;
                }
            };
            match self.cache.store_claimed(claim, p.chunk, &bytes) {
                Ok(()) => {
                    Stats::add(&self.stats.chunks_fetched, 1);
                    Stats::add(&self.stats.chunks_read_ahead, 1);
                    Stats::add(&self.stats.bytes_fetched, p.chunk.size);
                    Stats::add(&self.stats.compressed_bytes_fetched, p.chunk.compressed_len);
                    self.mark_present(p.ino, p.index, p.of);
                }
                Err(e) => {
                    let path = self.tree.node(p.ino).map(|n| n.path.display().to_string());
                    tracing::warn!(
                        chunk = %p.chunk.digest,
                        "lazy layer {}: read-ahead of {} skipped its chunk {} (file bytes {}..{}): {e}",
                        self.name,
                        path.unwrap_or_default(),
                        p.chunk.digest.short(),
                        p.chunk.file_offset,
                        p.chunk.file_offset + p.chunk.size,
                    );
                }
            }
        });
        result.unwrap_or_else(|| {
            Err(FetchError::msg(
                "the chunk source gave no bytes for the chunk",
            ))
        })
    }

    fn mark_present(&self, ino: u64, chunk: usize, chunks: usize) {
        let mut present = self.present.lock().expect("present lock");
        let seen = present.entry(ino).or_insert_with(|| vec![false; chunks]);
        if seen.is_empty() || seen[chunk] {
            return;
        }
        seen[chunk] = true;
        if seen.iter().all(|&s| s) {
            // An empty Vec marks "done" without keeping the bitmap.
            *seen = Vec::new();
            Stats::add(&self.stats.files_present, 1);
        }
    }

    /// The range from the backing dir's copy of the file, if one is set
    /// and the copy opens safely and has the right size; `None` falls back
    /// to chunks.
    fn read_backing(
        &self,
        node: &Node,
        size: u64,
        fh: u64,
        offset: u64,
        end: u64,
    ) -> Option<Vec<u8>> {
        let backing = self.backing.read().expect("backing lock").clone()?;
        let cached = self
            .handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .and_then(|h| h.backing.clone())
            .filter(|(generation, _)| *generation == backing.generation);
        let file = match cached {
            Some((_, file)) => file?,
            None => {
                let file = open_backing(&backing.dir, &node.path, size)
                    .inspect_err(|e| {
                        tracing::debug!(path = %node.path.display(), "lazy layer: backing copy unusable, reading chunks: {e}");
                    })
                    .ok()
                    .map(Arc::new);
                if let Some(h) = self.handles.lock().expect("handles lock").get_mut(&fh) {
                    h.backing = Some((backing.generation, file.clone()));
                }
                file?
            }
        };
        let mut out = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        match pread_into(&file, offset, end, &mut out) {
            Ok(()) => Some(out),
            Err(e) => {
                tracing::debug!(path = %node.path.display(), "lazy layer: backing copy read failed, reading chunks: {e}");
                None
            }
        }
    }
}

/// Opens `path` inside `dir` without following any symlink (the published
/// layer is hostile input too), and checks it is the regular file of
/// `size` bytes the tree says.
fn open_backing(dir: &OwnedFd, path: &Path, size: u64) -> std::io::Result<File> {
    let fd = rustix::fs::openat2(
        dir,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != size {
        return Err(std::io::Error::other(format!(
            "not a regular file of {size} bytes"
        )));
    }
    Ok(file)
}

fn as_index(n: u64) -> usize {
    usize::try_from(n).expect("chunk offsets fit in memory")
}

/// Reads exactly `lo..hi` of `f` onto the end of `out`.
fn pread_into(f: &File, lo: u64, hi: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    let start = out.len();
    out.resize(start + as_index(hi - lo), 0);
    f.read_exact_at(&mut out[start..], lo)
}

/// Bounds concurrent fetches from the source.
#[derive(Debug)]
pub(crate) struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

pub(crate) struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn new(n: usize) -> Self {
        Semaphore {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().expect("semaphore lock");
        while *free == 0 {
            free = self.cv.wait(free).expect("semaphore lock");
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("semaphore lock") += 1;
        self.0.cv.notify_one();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Worker threads for reads, so a slow fetch never holds up the FUSE
/// session loop (and so other files' lookups and cached reads). Clones
/// share the threads: mounts that share a pool have that many reads (and
/// chunks in memory) in flight together, however many layers there are.
/// The threads exit once every clone is dropped and the queue is empty.
#[derive(Debug, Clone)]
pub struct ReadPool {
    tx: mpsc::Sender<Job>,
}

impl ReadPool {
    /// `threads` workers (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("lazyfs-read".into())
                .spawn(move || loop {
                    let job = rx.lock().expect("pool queue lock").recv();
                    match job {
                        Ok(job) => job(),
                        Err(mpsc::RecvError) => return,
                    }
                })?;
        }
        Ok(ReadPool { tx })
    }

    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        // The workers outlive the sender, so this cannot fail.
        let _ = self.tx.send(Box::new(job));
    }
}
