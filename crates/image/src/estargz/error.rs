//! Why a TOC (eStargz or zstd:chunked) is refused: one variant per check in `toc`, each message one
//! line naming the entry (as the TOC spells it) and what was wrong.

/// Why a TOC was refused; each names the entry and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("TOC is larger than the {limit} bytes cvmd accepts")]
    TooLarge { limit: u64 },
    #[error("TOC is not valid TOC JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("TOC has version {0}; only version 1 is supported")]
    Version(i64),
    #[error("TOC has {count} entries, over the bound of {limit}")]
    TooManyEntries { count: usize, limit: usize },
    #[error("TOC entry {name:?} has a bad name: {why}")]
    BadName { name: String, why: &'static str },
    #[error("TOC entry {name:?} has unknown type {kind:?}")]
    UnknownType { name: String, kind: String },
    #[error("TOC names {name:?} twice")]
    Duplicate { name: String },
    #[error("TOC entry {name:?} has parent {parent:?}, which is not a directory")]
    ParentNotDir { name: String, parent: String },
    #[error("TOC entry {name:?} is a hardlink to {target:?}, which {why}")]
    HardlinkTarget {
        name: String,
        target: String,
        why: &'static str,
    },
    #[error("TOC entry {name:?} lacks {field}")]
    Missing { name: String, field: &'static str },
    #[error("TOC entry {name:?} has {field} {value}, out of range")]
    OutOfRange {
        name: String,
        field: &'static str,
        value: i128,
    },
    #[error("TOC entry {name:?} has a malformed {field}: {value:?}")]
    Malformed {
        name: String,
        field: &'static str,
        value: String,
    },
    #[error("TOC entry {name:?} is a chunk that follows no regular file of that name")]
    OrphanChunk { name: String },
    #[error("TOC entry {name:?}: a chunk starts at file offset {found}, expected {expected} (chunks must cover the file contiguously)")]
    ChunkGap {
        name: String,
        expected: u64,
        found: u64,
    },
    #[error("TOC entry {name:?}: its chunks cover {covered} of its {size} bytes")]
    ChunksShort {
        name: String,
        covered: u64,
        size: u64,
    },
    #[error("TOC entry {name:?} has a chunk of {size} bytes, over the bound of {limit}")]
    ChunkTooLarge { name: String, size: u64, limit: u64 },
    #[error("TOC entry {name:?} has a chunk at blob offset {offset}, outside the data before the TOC (at {toc_offset})")]
    SpanOutOfRange {
        name: String,
        offset: u64,
        toc_offset: u64,
    },
    #[error("TOC entries {name:?} and {other:?} claim overlapping compressed bytes at blob offset {offset}")]
    SpansOverlap {
        name: String,
        other: String,
        offset: u64,
    },
    #[error("TOC entry {name:?} has a chunk spanning blob bytes {offset}..{end}, not a non-empty range before the TOC (at {toc_offset})")]
    SpanEnd {
        name: String,
        offset: u64,
        end: u64,
        toc_offset: u64,
    },
    #[error("TOC entry {name:?} has chunkType {kind:?}; cvmd knows \"\" (data) and \"zeros\"")]
    ChunkType { name: String, kind: String },
}
