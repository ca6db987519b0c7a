//! What a conversion is asked for, what it produced, and why it failed.

use std::io;

use super::super::raw::{TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION};
use super::super::toc::TocError;
use super::DEFAULT_CHUNK_SIZE;
use crate::zstd_chunked::{TocPosition, CHECKSUM_ANNOTATION, POSITION_ANNOTATION};
use cvmd_digest::Digest;

/// Which seekable format a layer is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Estargz,
    ZstdChunked,
}

#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Uncompressed bytes per chunk (a gzip member).
    pub chunk_size: u64,
    /// Regular files (layer paths) to put first, before the prefetch
    /// landmark; empty: none, and a no-prefetch landmark.
    pub prefetch: Vec<String>,
    /// eStargz's gzip level.
    pub level: flate2::Compression,
    /// zstd:chunked's zstd level.
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            prefetch: Vec::new(),
            level: flate2::Compression::default(),
            zstd_level: 3,
        }
    }
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// eStargz: sha256 of the TOC JSON; zstd:chunked: sha256 of the
    /// compressed TOC. The layer's TOC annotation either way.
    pub toc_digest: Digest,
    /// zstd:chunked: where the compressed TOC is.
    pub toc_position: Option<TocPosition>,
    /// The blob's digest and size: the layer descriptor's.
    pub blob_digest: Digest,
    pub blob_size: u64,
    /// sha256 of the decompressed blob: the config's diff_id.
    pub diff_id: Digest,
    /// Bytes of the decompressed blob.
    pub tar_size: u64,
}

impl Written {
    /// The annotations the layer's descriptor carries for a lazy reader.
    pub fn annotations(&self) -> Vec<(&'static str, String)> {
        match &self.toc_position {
            None => vec![
                (TOC_DIGEST_ANNOTATION, self.toc_digest.to_string()),
                (UNCOMPRESSED_SIZE_ANNOTATION, self.tar_size.to_string()),
            ],
            Some(position) => vec![
                (CHECKSUM_ANNOTATION, self.toc_digest.to_string()),
                (POSITION_ANNOTATION, position.to_string()),
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("reading the layer tar (after entry {after:?}): {source}")]
    Read { after: String, source: io::Error },
    #[error("writing the converted blob: {0}")]
    Write(#[source] io::Error),
    #[error("layer entry {name:?} has a name that is not UTF-8, which an eStargz TOC cannot hold")]
    NotUtf8 { name: String },
    #[error("layer entry {name:?} escapes the layer root")]
    Escapes { name: String },
    #[error("layer tar names {name:?} twice; an eStargz TOC holds one entry per name")]
    Duplicate { name: String },
    #[error("layer entry {name:?} has tar type {kind:?}, which eStargz cannot hold")]
    Unsupported { name: String, kind: char },
    #[error("layer entry {name:?} declares {expected} bytes but holds {got}")]
    Truncated {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("the TOC written for this layer does not check (a cvmd bug, or a layer its format cannot express): {0}")]
    Toc(#[from] TocError),
}
