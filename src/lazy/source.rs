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
        let span = self.runtime.block_on(async {
            tokio::time::timeout(
                self.deadline,
                self.client
                    .get_blob_range(&self.reference, &self.blob, start, len),
            )
            .await
        });
        span.map_err(|_| FetchError::Deadline(self.deadline))?
            .map_err(|e| FetchError::msg(e.to_string()))
    }
}

impl ChunkSource for RegistrySpans {
    fn fetch(&self, chunk: &Chunk) -> Result<Vec<u8>, FetchError> {
        let span = self.span(chunk.blob_offset, chunk.compressed_len)?;
        decode(self.codec, &span, chunk)
    }

    /// One request for the span from the first chunk's start to the
    /// furthest chunk's end (chunks left out between them come along
    /// unused); each chunk is inflated from its own part of it, so chunks
    /// of one gzip member (one `blob_offset`, several `inner_offset`s)
    /// each inflate the member from its start.
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
