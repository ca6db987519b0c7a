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
}
