//! eStargz, the seekable tar.gz of stargz-snapshotter's docs/estargz.md: a
//! gzip layer whose regular files are gzip members of their own (chunks),
//! with a table of contents (TOC) and a footer pointing at it at the end,
//! so one file's bytes can be fetched and verified alone.
//!
//! - `toc`: the TOC's JSON and the checked index a lazy tree trusts;
//! - `footer`: finding and reading the TOC from the blob's tail;
//! - `writer`: a layer tar into an eStargz blob (`cvmd convert`).

pub mod footer;
mod modtime;
pub mod toc;
pub mod writer;

#[cfg(test)]
mod tests;

pub use footer::{parse_footer, read_toc, FooterError, FOOTER_SIZE};
pub use toc::{
    is_metadata_name, Chunk, Entry, EntryKind, RawEntry, RawToc, TocError, TocIndex, TocLimits,
    NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_DIGEST_ANNOTATION, TOC_NAME,
};
pub use writer::{write_estargz, WriteOptions, WriterError, Written};
