//! The disk side of one layer's download, on a blocking thread: the bytes
//! from the network are written to the blob's partial file and hashed, and
//! the same stream is decompressed, hashed again (the diff_id) and unpacked
//! into a staging dir. One pass: nothing is read twice or held whole.

use std::fs::File;
use std::io::{self, BufRead, Read};

use bytes::{Buf, Bytes};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::Receiver;

use super::pipe;
use crate::registry::manifest::Compression;
use crate::store::{BlobWriter, StoreError};
use crate::unpack::{unpack_layer, UnpackError, UnpackOptions, UnpackStats};
use cvmd_digest::Digest;

pub enum Msg {
    Data(Bytes),
    /// The registry ignored a Range request: what was unpacked is void.
    Restart,
}

#[derive(Debug, thiserror::Error)]
pub enum ToDiskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{what}: the uncompressed layer has digest {actual}, but the image config lists diff_id {expected}; nothing was stored")]
    DiffIdMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("the download restarted from the beginning")]
    Restarted,
    #[error(
        "{what}: the cache file system is full ({source}); the partial download was removed; \
         free space in the cache (cvmd gc --budget, CVMD_CACHE_BUDGET) or give the cache a \
         bigger volume"
    )]
    NoSpace {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("{what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// The compressed stream as the unpacker reads it: first what an earlier
/// run left on disk (`prefix`), then chunks from the network, each written
/// to the blob file before it is handed on. A [`BufRead`] whose buffer is
/// the network chunk itself: the decoder reads the bytes where they
/// arrived, without a copy into a buffer of its own.
pub struct Feed {
    prefix: Option<io::BufReader<io::Take<File>>>,
    rx: Option<Receiver<Msg>>,
    writer: Option<BlobWriter>,
    chunk: Bytes,
    failure: Option<ToDiskError>,
}

/// Reads of a stored blob or a resumed prefix.
const FILE_BUFFER: usize = 64 << 10;

impl Feed {
    /// A download: `writer` already holds `prefix` bytes on disk.
    pub fn download(writer: BlobWriter, prefix: Option<io::Take<File>>, rx: Receiver<Msg>) -> Self {
        Feed {
            prefix: prefix.map(|p| io::BufReader::with_capacity(FILE_BUFFER, p)),
            rx: Some(rx),
            writer: Some(writer),
            chunk: Bytes::new(),
            failure: None,
        }
    }

    /// A blob already in the store, read back for unpacking.
    pub fn stored(file: File) -> Self {
        Feed {
            prefix: Some(io::BufReader::with_capacity(
                FILE_BUFFER,
                file.take(u64::MAX),
            )),
            rx: None,
            writer: None,
            chunk: Bytes::new(),
            failure: None,
        }
    }

    fn fail(&mut self, e: ToDiskError) -> io::Error {
        let text = e.to_string();
        self.failure = Some(e);
        io::Error::other(text)
    }

    /// The next network chunk, written to the blob file first; empty at
    /// the stream's end.
    fn next_chunk(&mut self) -> io::Result<Bytes> {
        loop {
            let Some(rx) = &mut self.rx else {
                return Ok(Bytes::new());
            };
            match rx.blocking_recv() {
                Some(Msg::Data(b)) if b.is_empty() => continue,
                Some(Msg::Data(b)) => {
                    if let Some(w) = &mut self.writer {
                        if let Err(e) = w.write(&b) {
                            // A partial download is kept for a resume, but
                            // not one that filled the disk: it is what
                            // holds the space.
                            if is_no_space(&e) {
                                if let Some(w) = self.writer.take() {
                                    w.abandon();
                                }
                            }
                            return Err(self.fail(e.into()));
                        }
                    }
                    return Ok(b);
                }
                Some(Msg::Restart) => {
                    if let Some(w) = &mut self.writer {
                        if let Err(e) = w.restart() {
                            return Err(self.fail(e.into()));
                        }
                    }
                    return Err(self.fail(ToDiskError::Restarted));
                }
                // The network side is done (or gave up: it reports why).
                None => return Ok(Bytes::new()),
            }
        }
    }

    /// Reads the rest of the stream into the blob file only.
    fn drain(&mut self) -> io::Result<()> {
        loop {
            let n = self.fill_buf()?.len();
            if n == 0 {
                return Ok(());
            }
            self.consume(n);
        }
    }
}

impl BufRead for Feed {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(prefix) = &mut self.prefix {
            if !prefix.fill_buf()?.is_empty() {
                // Borrowed again: returning the first borrow from inside
                // the `if let` would keep `self` borrowed below.
                return self.prefix.as_mut().expect("checked above").fill_buf();
            }
            self.prefix = None;
        }
        if self.chunk.is_empty() {
            self.chunk = self.next_chunk()?;
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        match &mut self.prefix {
            Some(prefix) => prefix.consume(n),
            None => self.chunk.advance(n),
        }
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl ToDiskError {
    /// A store write that hit ENOSPC, said with the layer and image it was
    /// for (the store names only its own path).
    pub fn in_context(self, what: &str) -> ToDiskError {
        match self {
            ToDiskError::Store(source) if is_no_space(&source) => ToDiskError::NoSpace {
                what: what.to_string(),
                source,
            },
            other => other,
        }
    }
}

fn is_no_space(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

/// Hashes what passes through: the uncompressed stream's digest is the
/// layer's diff_id.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decompressed bytes in flight between a layer's two threads: enough to
/// keep both busy, little beside the 64 MiB a whole node's pull may use
/// (below glibc's mmap threshold, so recycled buffers stay in the heap).
/// 1 MiB rides out a big file's writes on the tar side, which had left the
/// inflating side waiting on a full pipe at 256 KiB: the systemd image
/// unpacked in 0.95 of the time, the 5-layer big image in 0.97, for 3 MiB
/// more peak RSS (bench/results/2026-12-04-ab-pipe-depth.md).
const PIPE_CHUNK: usize = 64 << 10;
const PIPE_DEPTH: usize = 16;

/// Unpacks the tar that `stream` yields on a second thread while this one
/// reads `stream` (the network side, the blob's hash and inflate) to its
/// end: one pass over the bytes, both cores busy. The tar side also hashes
/// what it reads (the diff_id; it reads to the stream's end), which evens
/// the two threads' work out. The outer error is a thread that could not
/// start; the inner one is the unpack's, as if it had read `stream` itself.
fn untar_beside(
    stream: &mut dyn Read,
    dest: &std::path::Path,
    opts: &UnpackOptions,
    what: &str,
) -> Result<Result<(UnpackStats, Digest), UnpackError>, ToDiskError> {
    let span = tracing::Span::current();
    std::thread::scope(|scope| {
        let (mut tx, rx) = pipe::pipe(PIPE_DEPTH, PIPE_CHUNK);
        let tar_side = std::thread::Builder::new()
            .name("cvmd-untar".into())
            .spawn_scoped(scope, move || {
                let mut hashing = Hashing {
                    inner: rx,
                    hasher: Sha256::new(),
                };
                let stats = span.in_scope(|| unpack_layer(&mut hashing, dest, opts))?;
                Ok((stats, Digest::from_hasher(hashing.hasher)))
            })
            .map_err(|source| ToDiskError::Read {
                what: format!("{what}: starting the unpack thread"),
                source,
            })?;
        let pumped = tx.pump(stream);
        drop(tx);
        let untarred = match tar_side.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // The tar side reads to the stream's end before it succeeds, so a
        // success with a failed pump cannot happen; were it to, the stream
        // did not arrive whole.
        if let (Ok(_), Err(e)) = (&untarred, &pumped) {
            let source = match e {
                pipe::PumpError::Read(kind) => io::Error::from(*kind),
                pipe::PumpError::Closed => io::Error::other("the unpack thread stopped early"),
            };
            return Err(ToDiskError::Read {
                what: what.to_string(),
                source,
            });
        }
        Ok(untarred)
    })
}

/// Drains `feed` into its blob writer only (a content-only pull).
pub fn store_only(mut feed: Feed) -> Result<BlobWriter, ToDiskError> {
    let drained = feed.drain();
    if let Some(f) = feed.failure.take() {
        return Err(f);
    }
    drained.map_err(|source| ToDiskError::Read {
        what: "the layer's download".into(),
        source,
    })?;
    Ok(feed.writer.take().expect("a download feed has a writer"))
}

/// Why a layer did not unpack. A stream that does not decode may have been
/// damaged on the way: the rest is read so the blob's digest can say so
/// (the more useful message). Either way the download is not kept: its
/// content is bad, not merely incomplete.
fn classify_failure(mut feed: Feed, e: UnpackError) -> ToDiskError {
    let Some(mut writer) = feed.writer.take() else {
        return e.into();
    };
    if matches!(e, UnpackError::Read { .. }) {
        feed.writer = Some(writer);
        let drained = feed.drain();
        if let Some(f) = feed.failure.take() {
            return f;
        }
        writer = feed.writer.take().expect("put back above");
        if drained.is_ok() {
            if let Err(mismatch @ StoreError::DigestMismatch { .. }) = writer.verify() {
                return mismatch.into();
            }
        }
    }
    writer.abandon();
    e.into()
}

pub struct Unpacked {
    pub stats: UnpackStats,
    /// The blob writer, for the caller to verify and commit.
    pub writer: Option<BlobWriter>,
}

/// Decompresses and unpacks `feed` into `dest`, checking the diff_id.
pub fn unpack(
    mut feed: Feed,
    compression: Compression,
    expected_diff_id: &Digest,
    dest: &std::path::Path,
    opts: &UnpackOptions,
    what: &str,
) -> Result<Unpacked, ToDiskError> {
    let result = {
        let mut decoded: Box<dyn Read + '_> = match compression {
            // Multi-member: a gzip stream may be several concatenated members
            // (pigz, some registries' re-compression).
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut feed)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut feed).map_err(|e| {
                    ToDiskError::Read {
                        what: what.to_string(),
                        source: e,
                    }
                })?,
            ),
            Compression::None => Box::new(&mut feed),
        };
        untar_beside(&mut decoded, dest, opts, what)?
    };
    // A failure of the feed (disk full, restart) explains the unpack error.
    if let Some(f) = feed.failure.take() {
        return Err(f);
    }
    let (stats, diff_id) = match result {
        Ok(v) => v,
        Err(e) => return Err(classify_failure(feed, e)),
    };
    // Whatever follows the compressed stream still belongs to the blob and
    // its digest.
    feed.drain().map_err(|source| ToDiskError::Read {
        what: what.to_string(),
        source,
    })?;
    if let Some(f) = feed.failure.take() {
        return Err(f);
    }
    if &diff_id != expected_diff_id {
        return Err(ToDiskError::DiffIdMismatch {
            what: what.to_string(),
            expected: expected_diff_id.clone(),
            actual: diff_id,
        });
    }
    Ok(Unpacked {
        stats,
        writer: feed.writer.take(),
    })
}
