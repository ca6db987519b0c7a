//! Why a TOC is refused: one variant per check in `toc`, each message one
//! line naming the entry (as the TOC spells it) and what was wrong.

/// Why a TOC was refused; each names the entry and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("eStargz TOC is larger than the {limit} bytes cvmd accepts")]
    TooLarge { limit: u64 },
    #[error("eStargz TOC is not valid TOC JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("eStargz TOC has version {0}; only version 1 is supported")]
    Version(i64),
    #[error("eStargz TOC has {count} entries, over the bound of {limit}")]
    TooManyEntries { count: usize, limit: usize },
    #[error("eStargz TOC entry {name:?} has a bad name: {why}")]
    BadName { name: String, why: &'static str },
    #[error("eStargz TOC entry {name:?} has unknown type {kind:?}")]
    UnknownType { name: String, kind: String },
    #[error("eStargz TOC names {name:?} twice")]
    Duplicate { name: String },
    #[error("eStargz TOC entry {name:?} has parent {parent:?}, which is not a directory")]
    ParentNotDir { name: String, parent: String },
    #[error("eStargz TOC entry {name:?} is a hardlink to {target:?}, which {why}")]
    HardlinkTarget {
        name: String,
        target: String,
        why: &'static str,
    },
    #[error("eStargz TOC entry {name:?} lacks {field}")]
    Missing { name: String, field: &'static str },
    #[error("eStargz TOC entry {name:?} has {field} {value}, out of range")]
    OutOfRange {
        name: String,
        field: &'static str,
        value: i128,
    },
    #[error("eStargz TOC entry {name:?} has a malformed {field}: {value:?}")]
    Malformed {
        name: String,
        field: &'static str,
        value: String,
    },
    #[error("eStargz TOC entry {name:?} is a chunk that follows no regular file of that name")]
    OrphanChunk { name: String },
    #[error("eStargz TOC entry {name:?}: a chunk starts at file offset {found}, expected {expected} (chunks must cover the file contiguously)")]
    ChunkGap {
        name: String,
        expected: u64,
        found: u64,
    },
    #[error("eStargz TOC entry {name:?}: its chunks cover {covered} of its {size} bytes")]
    ChunksShort {
        name: String,
        covered: u64,
        size: u64,
    },
    #[error("eStargz TOC entry {name:?} has a chunk of {size} bytes, over the bound of {limit}")]
    ChunkTooLarge { name: String, size: u64, limit: u64 },
    #[error("eStargz TOC entry {name:?} has a chunk at blob offset {offset}, outside the data before the TOC (at {toc_offset})")]
    SpanOutOfRange {
        name: String,
        offset: u64,
        toc_offset: u64,
    },
    #[error("eStargz TOC entries {name:?} and {other:?} claim overlapping bytes of the gzip member at blob offset {offset}")]
    SpansOverlap {
        name: String,
        other: String,
        offset: u64,
    },
}
