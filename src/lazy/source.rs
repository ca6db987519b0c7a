//! Where a lazy layer's bytes come from: HTTP Range requests for one
//! chunk's compressed span, inflated, within a deadline.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use cvmd_lazyfs::{Chunk, ChunkSource, FetchError};

use crate::digest::Digest;
use crate::registry::{Reference, RegistryClient};

/// One layer blob of one image on its registry.
#[derive(Debug)]
pub struct RegistrySpans {
    pub client: Arc<RegistryClient>,
    /// Pinned to the manifest digest.
    pub reference: Reference,
    pub blob: Digest,
    /// The FUSE server's threads are not the runtime's: they block on it.
    pub runtime: tokio::runtime::Handle,
    /// How long one read waits for the registry before it is EIO.
    pub deadline: Duration,
}

impl ChunkSource for RegistrySpans {
    fn fetch(&self, chunk: &Chunk) -> Result<Vec<u8>, FetchError> {
        let span = self.runtime.block_on(async {
            tokio::time::timeout(
                self.deadline,
                self.client.get_blob_range(
                    &self.reference,
                    &self.blob,
                    chunk.blob_offset,
                    chunk.compressed_len,
                ),
            )
            .await
        });
        let span = span
            .map_err(|_| FetchError::Deadline(self.deadline))?
            .map_err(|e| FetchError::msg(e.to_string()))?;
        inflate(&span, chunk.inner_offset, chunk.size)
    }
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

    #[test]
    fn a_short_or_broken_span_is_an_error_not_bytes() {
        let span = gz(b"tiny");
        assert!(inflate(&span, 0, 10).is_err());
        assert!(inflate(&span, 10, 1).is_err());
        assert!(inflate(b"not gzip at all", 0, 4).is_err());
    }
}
