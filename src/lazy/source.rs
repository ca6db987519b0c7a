//! Where a lazy layer's bytes come from: HTTP Range requests for one
//! chunk's compressed span (gzip members, or a zstd frame), inflated,
//! within a deadline.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use cvmd_lazyfs::{Chunk, ChunkSource, FetchError};

use crate::digest::Digest;
use crate::registry::{Reference, RegistryClient};

/// How a layer's spans are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanCodec {
    /// eStargz: gzip members, a chunk at an offset into them.
    Gzip,
    /// zstd:chunked: a chunk is one zstd frame.
    Zstd,
}

/// One layer blob of one image on its registry.
#[derive(Debug)]
pub struct RegistrySpans {
    pub client: Arc<RegistryClient>,
    /// Pinned to the manifest digest.
    pub reference: Reference,
    pub blob: Digest,
    pub codec: SpanCodec,
    /// The FUSE server's threads are not the runtime's: they block on it.
    pub runtime: tokio::runtime::Handle,
    /// How long one read waits for the registry before it is EIO.
    pub deadline: Duration,
}

impl RegistrySpans {
    /// Bytes `start .. start + len` of the blob, within the deadline.
    fn span(&self, start: u64, len: u64) -> Result<bytes::Bytes, FetchError> {
        let (client, reference, blob) = (
            self.client.clone(),
            self.reference.clone(),
            self.blob.clone(),
        );
        let fetch = async move { client.get_blob_range(&reference, &blob, start, len).await };
        match on_runtime(&self.runtime, self.deadline, fetch) {
            Ok(span) => span.map_err(|e| FetchError::msg(e.to_string())),
            Err(Waited::Deadline) => Err(FetchError::Deadline(self.deadline)),
            Err(Waited::Dropped) => Err(FetchError::msg(
                "cvmd is stopping: the fetch was dropped with its runtime",
            )),
        }
    }
}

/// Why [`on_runtime`] has no answer.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Deadline,
    /// The runtime dropped the task: it is shutting down (cvmd stops).
    Dropped,
}

/// Runs `fut` on the runtime of `handle` and waits for its output on this
/// thread (a FUSE worker, not the runtime's) at most `deadline`.
///
/// Spawned and waited for on a channel rather than `handle.block_on`: a
/// read that comes while cvmd stops (the runtime shutting down, a stop
/// with a read in flight) then fails as a dropped fetch, where block_on's
/// timer panicked (tokio's "A Tokio 1.x context was found, but it is being
/// shutdown"), killing the worker and leaving the read unanswered.
fn on_runtime<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    deadline: Duration,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Waited> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task = handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => Ok(out),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            task.abort();
            Err(Waited::Deadline)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Waited::Dropped),
    }
}

impl ChunkSource for RegistrySpans {
    fn fetch(&self, chunk: &Chunk) -> Result<Vec<u8>, FetchError> {
        let span = self.span(chunk.blob_offset, chunk.compressed_len)?;
        decode(self.codec, &span, chunk)
    }

    /// One request for the span from the first chunk's start to the
    /// furthest chunk's end (the read-ahead hands over runs without gaps,
    /// so nothing comes along unused); each chunk is inflated from its
    /// own part of it, so chunks of one gzip member (one `blob_offset`,
    /// several `inner_offset`s) each inflate the member from its start.
    fn fetch_run(
        &self,
        chunks: &[Chunk],
        each: &mut dyn FnMut(usize, Result<Vec<u8>, FetchError>),
    ) {
        let start = chunks.iter().map(|c| c.blob_offset).min().unwrap_or(0);
        let end = chunks
            .iter()
            .map(|c| c.blob_offset.saturating_add(c.compressed_len))
            .max()
            .unwrap_or(0);
        match self.span(start, end - start) {
            Ok(span) => inflate_run(self.codec, &span, start, chunks, each),
            Err(e) => {
                for i in 0..chunks.len() {
                    each(i, Err(e.again()));
                }
            }
        }
    }
}

/// Inflates each of `chunks` from its part of `span`, the blob's bytes
/// from `start`, handing each over as soon as it is done.
fn inflate_run(
    codec: SpanCodec,
    span: &[u8],
    start: u64,
    chunks: &[Chunk],
    each: &mut dyn FnMut(usize, Result<Vec<u8>, FetchError>),
) {
    for (i, c) in chunks.iter().enumerate() {
        let got = c
            .blob_offset
            .checked_sub(start)
            .ok_or_else(|| FetchError::msg("a chunk starts before its run"))
            .and_then(|at| part(span, at, c.compressed_len))
            .and_then(|part| decode(codec, part, c));
        each(i, got);
    }
}

/// `len` bytes at `at` of `span`, or an error if the registry sent fewer.
fn part(span: &[u8], at: u64, len: u64) -> Result<&[u8], FetchError> {
    usize::try_from(at)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(at, len)| span.get(at..at.checked_add(len)?))
        .ok_or_else(|| {
            FetchError::msg(format!(
                "the registry's answer holds {} bytes, short of the chunk's span at {at}+{len}",
                span.len()
            ))
        })
}

/// The chunk `c` from its compressed span.
fn decode(codec: SpanCodec, span: &[u8], c: &Chunk) -> Result<Vec<u8>, FetchError> {
    match codec {
        SpanCodec::Gzip => inflate(span, c.inner_offset, c.size),
        SpanCodec::Zstd => unzstd(span, c.size),
    }
}

/// `size` bytes of the zstd frame in `span`, never more (the frame may
/// claim any size: reading stops one byte past the chunk's).
pub fn unzstd(span: &[u8], size: u64) -> Result<Vec<u8>, FetchError> {
    let broken = |e: std::io::Error| FetchError::msg(format!("the span does not decompress: {e}"));
    let zstd = zstd::stream::read::Decoder::with_buffer(span).map_err(broken)?;
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    zstd.take(size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(broken)?;
    if out.len() as u64 != size {
        return Err(FetchError::msg(format!(
            "the span decompresses to {} bytes{}, not the chunk's {size}",
            out.len(),
            if out.len() as u64 > size {
                " or more"
            } else {
                ""
            }
        )));
    }
    Ok(out)
}

/// `size` bytes after `skip` of the gzip members in `span`. The caller
/// (the chunk cache) checks them against the chunk's digest.
pub fn inflate(span: &[u8], skip: u64, size: u64) -> Result<Vec<u8>, FetchError> {
    let mut gz = flate2::read::MultiGzDecoder::new(span);
    let skipped = std::io::copy(&mut (&mut gz).take(skip), &mut std::io::sink())
        .map_err(|e| FetchError::msg(format!("the span does not inflate: {e}")))?;
    if skipped != skip {
        return Err(FetchError::msg(format!(
            "the span inflates to {skipped} bytes, before the chunk's offset {skip}"
        )));
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    gz.take(size)
        .read_to_end(&mut out)
        .map_err(|e| FetchError::msg(format!("the span does not inflate: {e}")))?;
    if out.len() as u64 != size {
        return Err(FetchError::msg(format!(
            "the span holds {} bytes of the chunk, not {size}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn takes_the_chunk_after_its_inner_offset_across_members() {
        let mut span = gz(b"header--");
        span.extend(gz(b"chunk bytes"));
        span.extend(gz(b"next tar header"));
        assert_eq!(inflate(&span, 8, 5).unwrap(), b"chunk");
        assert_eq!(inflate(&span, 0, 8).unwrap(), b"header--");
    }

    fn chunk(blob_offset: u64, compressed_len: u64, inner_offset: u64, data: &[u8]) -> Chunk {
        Chunk {
            file_offset: 0,
            size: data.len() as u64,
            blob_offset,
            compressed_len,
            inner_offset,
            digest: Digest::of(data),
        }
    }

    #[test]
    fn a_run_inflates_each_chunk_from_its_own_part_of_one_span() {
        // A blob: some bytes before the run, a member holding two chunks
        // (by inner offset), a member holding one, then a member between
        // them left out of the run, then a last one.
        let mut blob = b"earlier bytes".to_vec();
        let shared = gz(b"firstsecond");
        let one = gz(b"third");
        let skipped = gz(b"not in the run");
        let last = gz(b"fourth");
        let at = |blob: &Vec<u8>| blob.len() as u64;
        let run_start = at(&blob);
        blob.extend(&shared);
        let one_at = at(&blob);
        blob.extend(&one);
        blob.extend(&skipped);
        let last_at = at(&blob);
        blob.extend(&last);
        let chunks = [
            chunk(run_start, shared.len() as u64, 0, b"first"),
            chunk(run_start, shared.len() as u64, 5, b"second"),
            chunk(one_at, one.len() as u64, 0, b"third"),
            chunk(last_at, last.len() as u64, 0, b"fourth"),
        ];
        let span = &blob[usize::try_from(run_start).unwrap()..];
        let mut got = Vec::new();
        inflate_run(SpanCodec::Gzip, span, run_start, &chunks, &mut |i, r| {
            got.push((i, String::from_utf8(r.unwrap()).unwrap()));
        });
        assert_eq!(
            got,
            [
                (0, "first".to_string()),
                (1, "second".to_string()),
                (2, "third".to_string()),
                (3, "fourth".to_string())
            ]
        );
        // An answer cut short fails the chunks past its end only.
        let short = &span[..span.len() - 3];
        let mut ok = Vec::new();
        inflate_run(SpanCodec::Gzip, short, run_start, &chunks, &mut |i, r| {
            ok.push((i, r.is_ok()))
        });
        assert_eq!(ok, [(0, true), (1, true), (2, true), (3, false)]);
    }

    #[test]
    fn a_fetch_on_the_runtime_answers_times_out_or_is_dropped_never_panics() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let second = Duration::from_secs(1);
        assert_eq!(on_runtime(&handle, second, async { 7 }), Ok(7));
        let began = std::time::Instant::now();
        assert_eq!(
            on_runtime(
                &handle,
                Duration::from_millis(100),
                std::future::pending::<()>()
            ),
            Err(Waited::Deadline)
        );
        assert!(began.elapsed() < second);
        // A fetch in flight when the runtime shuts down, and one asked
        // for after: both are dropped, neither panics nor waits out the
        // deadline.
        let in_flight = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                on_runtime(&handle, Duration::from_secs(30), async {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        rt.shutdown_background();
        assert_eq!(in_flight.join().unwrap(), Err(Waited::Dropped));
        let began = std::time::Instant::now();
        assert_eq!(
            on_runtime(&handle, Duration::from_secs(30), async {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }),
            Err(Waited::Dropped)
        );
        assert!(began.elapsed() < second);
    }

    #[test]
    fn a_zstd_frame_gives_its_chunk_and_never_more() {
        let frame = zstd::bulk::compress(b"chunk bytes", 3).unwrap();
        assert_eq!(unzstd(&frame, 11).unwrap(), b"chunk bytes");
        // A frame holding more than the TOC says, or less, or a cut one.
        assert!(unzstd(&frame, 5).is_err());
        assert!(unzstd(&frame, 20).is_err());
        assert!(unzstd(&frame[..frame.len() - 2], 11).is_err());
        let mut run = b"before".to_vec();
        let at = run.len() as u64;
        run.extend(&frame);
        let c = chunk(at, frame.len() as u64, 0, b"chunk bytes");
        let mut got = Vec::new();
        inflate_run(SpanCodec::Zstd, &run[6..], at, &[c], &mut |_, r| {
            got.push(r.unwrap())
        });
        assert_eq!(got, [b"chunk bytes".to_vec()]);
    }

    #[test]
    fn a_short_or_broken_span_is_an_error_not_bytes() {
        let span = gz(b"tiny");
        assert!(inflate(&span, 0, 10).is_err());
        assert!(inflate(&span, 10, 1).is_err());
        assert!(inflate(b"not gzip at all", 0, 4).is_err());
    }
}
