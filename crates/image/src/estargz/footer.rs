//! Finding the TOC from the end of an eStargz blob ("Footer" in
//! docs/estargz.md): the last 51 bytes are an empty gzip member whose extra
//! field says, in 16 hex digits, where the TOC's gzip member starts; that
//! member holds the tar entry `stargz.index.json`. No network here: the
//! caller fetches the bytes (two range reads) and hands them in.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;

use sha2::{Digest as _, Sha256};

use super::raw::{TOC_DIGEST_ANNOTATION, TOC_NAME};
use super::toc::{TocError, TocIndex, TocLimits};
use cvmd_digest::Digest;

/// The footer's fixed size.
pub const FOOTER_SIZE: u64 = 51;

/// The footer's bytes but the 16 hex digits of the offset (at 16..32):
/// header with only FEXTRA, XLEN 26, subfield `SG` of length 22,
/// `STARGZ`, an empty final stored block, CRC32 and ISIZE of nothing.
const HEADER: [u8; 16] = [
    0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
];
const TRAILER: [u8; 19] = [
    b'S', b'T', b'A', b'R', b'G', b'Z', 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    #[error("blob of {size} bytes is too short for an eStargz footer ({FOOTER_SIZE} bytes)")]
    Short { size: u64 },
    #[error("blob does not end in an eStargz footer: {why}")]
    NotEstargz { why: &'static str },
    #[error(
        "eStargz footer puts the TOC at offset {offset}, outside the blob's first {limit} bytes"
    )]
    OffsetOutOfRange { offset: u64, limit: u64 },
    #[error("eStargz TOC member at offset {offset} is unreadable: {source}")]
    Unreadable { offset: u64, source: std::io::Error },
    #[error("eStargz TOC member at offset {offset} starts with entry {found:?}, not {TOC_NAME}")]
    NotToc { offset: u64, found: String },
    #[error("eStargz TOC has digest {actual}, but the layer's {TOC_DIGEST_ANNOTATION} annotation says {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("layer annotation {TOC_DIGEST_ANNOTATION} is not a sha256 digest: {value:?}")]
    BadAnnotation { value: String },
    #[error(transparent)]
    Toc(#[from] TocError),
}

/// The footer for a TOC at `toc_offset`.
pub fn footer_bytes(toc_offset: u64) -> [u8; 51] {
    let mut out = [0u8; 51];
    out[..16].copy_from_slice(&HEADER);
    out[16..32].copy_from_slice(format!("{toc_offset:016x}").as_bytes());
    out[32..].copy_from_slice(&TRAILER);
    out
}

/// The TOC offset from `tail`, the last [`FOOTER_SIZE`] bytes of a blob of
/// `blob_size` bytes (a longer slice: its last 51 bytes).
pub fn parse_footer(tail: &[u8], blob_size: u64) -> Result<u64, FooterError> {
    if blob_size < FOOTER_SIZE || (tail.len() as u64) < FOOTER_SIZE {
        return Err(FooterError::Short {
            size: blob_size.min(tail.len() as u64),
        });
    }
    let f = &tail[tail.len() - 51..];
    let not = |why| Err(FooterError::NotEstargz { why });
    if f[..3] != [0x1f, 0x8b, 0x08] {
        return not("its last 51 bytes are not a gzip member");
    }
    if f[3] != 0x04 || f[10..12] != [26, 0] {
        return not("the last gzip member has no 26-byte extra field (a plain gzip layer, or legacy stargz)");
    }
    if f[12..16] != HEADER[12..16] || f[32..38] != TRAILER[..6] {
        return not("the extra field is not an SG subfield ending in STARGZ");
    }
    if f[38..] != TRAILER[6..] {
        return not("the footer's gzip member is not empty");
    }
    let hex = std::str::from_utf8(&f[16..32]).ok();
    let Some(offset) = hex
        .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    else {
        return not("the TOC offset is not 16 hex digits");
    };
    let limit = blob_size - FOOTER_SIZE;
    if offset >= limit {
        return Err(FooterError::OffsetOutOfRange { offset, limit });
    }
    Ok(offset)
}

/// The TOC digest a layer descriptor's annotations promise, if any.
pub fn annotated_toc_digest(
    annotations: Option<&HashMap<String, String>>,
) -> Result<Option<Digest>, FooterError> {
    match annotations.and_then(|a| a.get(TOC_DIGEST_ANNOTATION)) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| FooterError::BadAnnotation {
            value: v.chars().take(100).collect(),
        }),
    }
}

/// Inflates the TOC member (`member`: the blob's bytes from `toc_offset` up
/// to the footer), checks the TOC JSON against `expected` (the layer's
/// [`TOC_DIGEST_ANNOTATION`]; the spec's TOC digest is the JSON's sha256)
/// and parses it. Returns the index and the digest found.
pub fn read_toc<R: Read>(
    member: R,
    toc_offset: u64,
    expected: Option<&Digest>,
    limits: &TocLimits,
) -> Result<(TocIndex, Digest), FooterError> {
    let unreadable = |source| FooterError::Unreadable {
        offset: toc_offset,
        source,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(member));
    let mut entries = archive.entries().map_err(unreadable)?;
    let mut entry = match entries.next() {
        None => {
            return Err(FooterError::NotToc {
                offset: toc_offset,
                found: String::new(),
            })
        }
        Some(e) => e.map_err(unreadable)?,
    };
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if name.strip_prefix("./").unwrap_or(&name) != TOC_NAME
        || !entry.header().entry_type().is_file()
    {
        return Err(FooterError::NotToc {
            offset: toc_offset,
            found: name.chars().take(100).collect(),
        });
    }
    if entry.size() > limits.max_toc_bytes {
        return Err(TocError::TooLarge {
            limit: limits.max_toc_bytes,
        }
        .into());
    }
    let mut json = Vec::new();
    (&mut entry)
        .take(limits.max_toc_bytes + 1)
        .read_to_end(&mut json)
        .map_err(unreadable)?;
    let actual = Digest::from_hasher(Sha256::new_with_prefix(&json));
    if let Some(expected) = expected {
        if *expected != actual {
            return Err(FooterError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
    }
    let index = TocIndex::parse(&json, toc_offset, limits)?;
    Ok((index, actual))
}

/// What the blob's tail gave: the TOC, or the range still to fetch.
#[derive(Debug)]
pub enum TailToc {
    /// The tail held the footer and the whole TOC member.
    Read { index: TocIndex, digest: Digest },
    /// The TOC member starts before the tail: fetch this range (from the
    /// TOC's offset to the footer) and call [`read_toc`] with it.
    Fetch { toc_offset: u64, range: Range<u64> },
}

/// Reads the TOC from the last `tail.len()` bytes of a blob of `blob_size`
/// bytes, so one range request (say the last 1 MiB) serves most layers;
/// when the TOC begins earlier, says which range to fetch.
pub fn read_toc_from_tail(
    tail: &[u8],
    blob_size: u64,
    expected: Option<&Digest>,
    limits: &TocLimits,
) -> Result<TailToc, FooterError> {
    let toc_offset = parse_footer(tail, blob_size)?;
    let end = blob_size - FOOTER_SIZE;
    let tail_start = blob_size.saturating_sub(tail.len() as u64);
    if toc_offset < tail_start {
        return Ok(TailToc::Fetch {
            toc_offset,
            range: toc_offset..end,
        });
    }
    let from = usize::try_from(toc_offset - tail_start).unwrap_or(usize::MAX);
    let to = tail.len() - 51;
    let (index, digest) = read_toc(&tail[from..to], toc_offset, expected, limits)?;
    Ok(TailToc::Read { index, digest })
}
