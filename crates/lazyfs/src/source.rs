//! Where chunks come from when the cache does not have them.

use std::time::Duration;

use crate::tree::Chunk;

/// Fetches a chunk's uncompressed bytes (e.g. by an HTTP Range request for
/// its compressed span, then inflating from `inner_offset`). Called on a
/// worker thread, never on the FUSE session loop; it must give up by its
/// own deadline, since the reading process waits until it returns. The
/// bytes are verified against the chunk's digest by the caller.
pub trait ChunkSource: Send + Sync {
    fn fetch(&self, chunk: &Chunk) -> Result<Vec<u8>, FetchError>;

    /// Fetches `chunks`, sorted by `(blob_offset, inner_offset)` and close
    /// together in the blob (a read-ahead run: the chunk a read needs and
    /// the ones after it), and calls `each(i, bytes of chunks[i])` exactly
    /// once per chunk, in order. A source over one blob answers with one
    /// request for the span from the first chunk's `blob_offset` to the
    /// end of the furthest one's, gaps included, so a run costs one round
    /// trip. Handing each chunk over as soon as it is inflated keeps one
    /// inflated chunk in memory at a time beside the span.
    ///
    /// The default fetches the chunks one by one.
    fn fetch_run(
        &self,
        chunks: &[Chunk],
        each: &mut dyn FnMut(usize, Result<Vec<u8>, FetchError>),
    ) {
        for (i, c) in chunks.iter().enumerate() {
            each(i, self.fetch(c));
        }
    }
}

impl std::fmt::Debug for dyn ChunkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkSource")
    }
}

/// Why a chunk could not be fetched; it goes into the read's log line.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within the read deadline of {0:?}")]
    Deadline(Duration),
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl FetchError {
    /// An error from a message.
    pub fn msg(msg: impl Into<String>) -> Self {
        FetchError::Other(msg.into().into())
    }

    /// The same failure again, for every chunk of a run whose one request
    /// failed (the source error itself is not `Clone`).
    pub fn again(&self) -> Self {
        match self {
            FetchError::Deadline(d) => FetchError::Deadline(*d),
            FetchError::Other(e) => FetchError::msg(e.to_string()),
        }
    }
}
