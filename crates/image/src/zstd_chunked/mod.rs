//! zstd:chunked, containers/storage's seekable tar+zstd
//! (docs/containers-storage-zstd-chunked.md there; the format lives in its
//! pkg/chunked): a zstd layer whose regular files' chunks are zstd frames
//! of their own, with a CRFS-style TOC (the eStargz TOC's entries, plus
//! `endOffset` and `chunkType`) compressed in a skippable frame after the
//! tar, and a footer frame at the end. Decompressed whole, the blob is the
//! layer tar: a zstd decoder skips skippable frames.
//!
//! - `raw`: the annotations, magic numbers and the TOC's position;
//! - `footer`: finding the TOC (annotation or footer) and reading it into
//!   the checked index eStargz uses (`crate::estargz::toc`);
//! - `writer`: a layer tar into a zstd:chunked blob (`cvmd convert
//!   --format zstd:chunked`), through the eStargz writer's walk.

pub mod footer;
pub mod raw;
pub mod writer;

#[cfg(test)]
mod tests;

pub use footer::{
    annotated, parse_footer, read_toc, skippable_frame, Annotated, ZstdChunkedError,
    FOOTER_FRAME_SIZE,
};
pub use raw::{
    TocPosition, CHECKSUM_ANNOTATION, LEGACY_CHECKSUM_ANNOTATION, LEGACY_POSITION_ANNOTATION,
    POSITION_ANNOTATION,
};
pub use writer::write_zstd_chunked;
