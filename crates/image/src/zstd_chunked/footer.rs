//! Finding and reading a zstd:chunked TOC. Its position comes from the
//! layer's position annotation (one Range request) or, without it, from the
//! footer: the blob's last skippable frame, 64 bytes of little-endian
//! offset, compressed and uncompressed length and manifest type of the TOC,
//! then the tar-split's three, then the magic `GNUlInUx` (releases before
//! tar-split wrote 40 bytes: the TOC's four and the magic). The TOC's
//! bytes are checked against the checksum annotation before they are
//! decompressed, and decompressed only up to the size cvmd accepts.

use std::collections::HashMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::raw::*;
use crate::estargz::{TocError, TocFormat, TocIndex, TocLimits};
use cvmd_digest::Digest;

/// The footer frame as written today: header and 64 bytes.
pub const FOOTER_FRAME_SIZE: u64 = FRAME_HEADER + 64;
/// The footer frame before tar-split: header and 40 bytes.
const LEGACY_FOOTER_FRAME_SIZE: u64 = FRAME_HEADER + 40;
/// The magic as the first releases spelled it.
const LEGACY_FOOTER_MAGIC: [u8; 8] = *b"GnUlInUx";

#[derive(Debug, thiserror::Error)]
pub enum ZstdChunkedError {
    #[error("blob of {size} bytes is too short for a zstd:chunked footer")]
    Short { size: u64 },
    #[error("blob does not end in a zstd:chunked footer: {why}")]
    NotZstdChunked { why: &'static str },
    #[error("zstd:chunked TOC at blob bytes {offset}+{len} lies outside the blob's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("layer annotation {annotation} is malformed: {value:?}")]
    BadAnnotation {
        annotation: &'static str,
        value: String,
    },
    #[error("zstd:chunked TOC is {size} bytes, over the {limit} bytes cvmd accepts")]
    TooLarge { size: u64, limit: u64 },
    #[error("zstd:chunked TOC holds {got} bytes, its position says {expected}")]
    Length { got: u64, expected: u64 },
    #[error("zstd:chunked TOC has digest {actual}, but the layer's {CHECKSUM_ANNOTATION} annotation says {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("zstd:chunked TOC does not decompress to its declared {expected} bytes: {why}")]
    Undecompressable { expected: u64, why: String },
    #[error(transparent)]
    Toc(#[from] TocError),
}

/// What a zstd:chunked layer's descriptor promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotated {
    /// sha256 of the compressed TOC.
    pub checksum: Digest,
    /// Where it is, when the descriptor says.
    pub position: Option<TocPosition>,
}

fn either<'a>(
    annotations: &'a HashMap<String, String>,
    key: &'static str,
    legacy: &'static str,
) -> Option<(&'static str, &'a String)> {
    annotations
        .get(key)
        .map(|v| (key, v))
        .or_else(|| annotations.get(legacy).map(|v| (legacy, v)))
}

/// The zstd:chunked TOC a layer descriptor's annotations promise, if any.
pub fn annotated(
    annotations: Option<&HashMap<String, String>>,
) -> Result<Option<Annotated>, ZstdChunkedError> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    let bad = |annotation, value: &str| ZstdChunkedError::BadAnnotation {
        annotation,
        value: value.chars().take(100).collect(),
    };
    let Some((key, value)) = either(a, CHECKSUM_ANNOTATION, LEGACY_CHECKSUM_ANNOTATION) else {
        return Ok(None);
    };
    let checksum: Digest = value.parse().map_err(|_| bad(key, value))?;
    let position = match either(a, POSITION_ANNOTATION, LEGACY_POSITION_ANNOTATION) {
        None => None,
        Some((key, value)) => Some(TocPosition::parse(value).ok_or_else(|| bad(key, value))?),
    };
    Ok(Some(Annotated { checksum, position }))
}

/// Refuses a position outside a blob of `blob_size` bytes, or a TOC
/// larger than `limits` allow (before anything is fetched or inflated).
pub fn check_position(
    position: &TocPosition,
    blob_size: u64,
    limits: &TocLimits,
) -> Result<(), ZstdChunkedError> {
    let TocPosition {
        offset,
        compressed_len: len,
        uncompressed_len,
    } = *position;
    if offset < FRAME_HEADER || offset.checked_add(len).is_none_or(|end| end > blob_size) {
        return Err(ZstdChunkedError::OutOfRange {
            offset,
            len,
            size: blob_size,
        });
    }
    for size in [len, uncompressed_len] {
        if size > limits.max_toc_bytes {
            return Err(ZstdChunkedError::TooLarge {
                size,
                limit: limits.max_toc_bytes,
            });
        }
    }
    Ok(())
}

fn le(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The TOC's position from `tail`, the last bytes of a blob of `blob_size`
/// bytes (at least [`FOOTER_FRAME_SIZE`] of them, or the whole blob).
pub fn parse_footer(
    tail: &[u8],
    blob_size: u64,
    limits: &TocLimits,
) -> Result<TocPosition, ZstdChunkedError> {
    let n = tail.len();
    if (n as u64) < LEGACY_FOOTER_FRAME_SIZE || blob_size < LEGACY_FOOTER_FRAME_SIZE {
        return Err(ZstdChunkedError::Short {
            size: blob_size.min(n as u64),
        });
    }
    let not = |why| Err(ZstdChunkedError::NotZstdChunked { why });
    if tail[n - 8..] != FOOTER_MAGIC && tail[n - 8..] != LEGACY_FOOTER_MAGIC {
        return not("its last 8 bytes are not GNUlInUx");
    }
    let frame_at = |size: u64| -> Option<&[u8]> {
        let size = usize::try_from(size).ok()?;
        let frame = tail.get(n.checked_sub(size)?..)?;
        let len = u32::from_le_bytes(frame[4..8].try_into().ok()?);
        (frame[..4] == SKIPPABLE_MAGIC && len as usize + 8 == size).then_some(&frame[8..])
    };
    let Some(data) = frame_at(FOOTER_FRAME_SIZE).or_else(|| frame_at(LEGACY_FOOTER_FRAME_SIZE))
    else {
        return not("the magic is not at the end of a 64- or 40-byte skippable frame");
    };
    if le(data, 24) != MANIFEST_TYPE_CRFS {
        return not("the TOC's manifest type is not 1 (CRFS)");
    }
    let position = TocPosition {
        offset: le(data, 0),
        compressed_len: le(data, 8),
        uncompressed_len: le(data, 16),
    };
    check_position(&position, blob_size, limits)?;
    Ok(position)
}

/// Checks the compressed TOC (the blob's bytes at `position`) against
/// `expected` (the checksum annotation), decompresses it within `limits`
/// and parses it into the checked index.
pub fn read_toc(
    compressed: &[u8],
    position: &TocPosition,
    expected: &Digest,
    limits: &TocLimits,
) -> Result<TocIndex, ZstdChunkedError> {
    if compressed.len() as u64 != position.compressed_len {
        return Err(ZstdChunkedError::Length {
            got: compressed.len() as u64,
            expected: position.compressed_len,
        });
    }
    let declared = position.uncompressed_len;
    if declared > limits.max_toc_bytes {
        return Err(ZstdChunkedError::TooLarge {
            size: declared,
            limit: limits.max_toc_bytes,
        });
    }
    let actual = Digest::from_hasher(Sha256::new_with_prefix(compressed));
    if *expected != actual {
        return Err(ZstdChunkedError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    let undecompressable = |why: String| ZstdChunkedError::Undecompressable {
        expected: declared,
        why,
    };
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| undecompressable(e.to_string()))?;
    let mut json = Vec::new();
    // One byte past what it declares tells a lie from the truth.
    decoder
        .take(declared + 1)
        .read_to_end(&mut json)
        .map_err(|e| undecompressable(e.to_string()))?;
    if json.len() as u64 != declared {
        return Err(undecompressable(format!("it holds {} or more", json.len())));
    }
    Ok(TocIndex::parse_as(
        TocFormat::ZstdChunked,
        &json,
        position.frame_start(),
        limits,
    )?)
}

/// `data` as a skippable frame.
pub fn skippable_frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(&SKIPPABLE_MAGIC);
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// The footer frame for a TOC at `position` (no tar-split: its fields 0).
pub fn footer_frame(position: &TocPosition) -> Vec<u8> {
    let mut data = [0u8; 64];
    data[..8].copy_from_slice(&position.offset.to_le_bytes());
    data[8..16].copy_from_slice(&position.compressed_len.to_le_bytes());
    data[16..24].copy_from_slice(&position.uncompressed_len.to_le_bytes());
    data[24..32].copy_from_slice(&MANIFEST_TYPE_CRFS.to_le_bytes());
    data[56..].copy_from_slice(&FOOTER_MAGIC);
    skippable_frame(&data)
}
