//! eStargz, the seekable tar.gz of stargz-snapshotter's docs/estargz.md: a
//! gzip layer whose regular files are gzip members of their own (chunks),
//! with a table of contents (TOC) and a footer pointing at it at the end,
//! so one file's bytes can be fetched and verified alone.
//!
//! - `raw`: the TOC's JSON as serialized, the format's names and annotations;
//! - `toc`: the checked index a lazy tree trusts (`error`: its refusals);
//! - `footer`: finding and reading the TOC from the blob's tail;
//! - `writer`: a layer tar into an eStargz blob (`cvmd convert`), through
//!   `sink`'s gzip members.

mod error;
pub mod footer;
mod modtime;
pub mod raw;
pub(crate) mod sink;
pub mod toc;
pub mod writer;

#[cfg(test)]
mod tests;

pub use footer::{
    annotated_toc_digest, parse_footer, read_toc, read_toc_from_tail, FooterError, TailToc,
    FOOTER_SIZE,
};
pub use raw::{
    is_metadata_name, RawEntry, RawToc, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION, TOC_NAME, UNCOMPRESSED_SIZE_ANNOTATION,
};
pub use toc::{Chunk, Entry, EntryKind, TocError, TocFormat, TocIndex, TocLimits, Whiteout};
pub use writer::{write_estargz, write_layer, Layout, WriteOptions, WriterError, Written};

/// For each layer of an image manifest (its JSON as stored), whether its
/// descriptor carries [`TOC_DIGEST_ANNOTATION`], i.e. whether it is an
/// eStargz layer whose metadata files the unpacker skips. Read from the raw
/// JSON so that no manifest type needs to carry annotations for it.
pub fn estargz_layers(manifest_json: &[u8]) -> Vec<bool> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest_json) else {
        return Vec::new();
    };
    v.get("layers")
        .and_then(|l| l.as_array())
        .map(|layers| {
            layers
                .iter()
                .map(|l| {
                    l.get("annotations")
                        .and_then(|a| a.get(TOC_DIGEST_ANNOTATION))
                        .is_some()
                })
                .collect()
        })
        .unwrap_or_default()
}
