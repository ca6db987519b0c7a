//! A layer tar into a zstd:chunked blob, as containers/storage's
//! compressor lays it out: the tar in zstd frames, a frame per chunk of
//! file data, then the compressed TOC in a skippable frame and the footer
//! frame. The walk over the tar is the eStargz writer's
//! (`crate::estargz::writer`, [`Layout::ZstdChunked`]); this is its end.
//! No tar-split frame is written: cvmd's reader needs none (the footer's
//! tar-split fields are 0).

use std::io::{self, Read, Write};

use super::footer::{footer_frame, skippable_frame};
use super::raw::{TocPosition, FRAME_HEADER};
use crate::estargz::raw::{RawEntry, RawToc};
use crate::estargz::sink::Sink;
use crate::estargz::writer::{write_layer, Layout, WriteOptions, WriterError, Written};
use crate::estargz::{TocFormat, TocIndex, TocLimits};
use cvmd_digest::Digest;

/// Converts the layer tar `open()` yields into a zstd:chunked blob on `out`.
pub fn write_zstd_chunked<R: Read, W: Write>(
    open: impl FnMut() -> io::Result<R>,
    out: W,
    opts: &WriteOptions,
) -> Result<Written, WriterError> {
    write_layer(open, out, opts, Layout::ZstdChunked)
}

/// Ends the blob after the tar (already in `sink`): the TOC frame and the
/// footer frame.
pub(crate) fn finish<W: Write>(
    sink: Sink<W>,
    entries: Vec<RawEntry>,
    level: i32,
) -> Result<Written, WriterError> {
    let (mut counter, tar_hash, tar_size) = sink.finish().map_err(WriterError::Write)?;
    let frame_start = counter.count;
    let toc = RawToc {
        version: 1,
        entries,
    };
    let json = serde_json::to_vec(&toc).map_err(|e| WriterError::Write(e.into()))?;
    // What a reader will check: refuse to publish a TOC it would refuse.
    TocIndex::check_as(
        TocFormat::ZstdChunked,
        toc,
        frame_start,
        &TocLimits::default(),
    )?;
    let compressed = zstd::bulk::compress(&json, level).map_err(WriterError::Write)?;
    let position = TocPosition {
        offset: frame_start + FRAME_HEADER,
        compressed_len: compressed.len() as u64,
        uncompressed_len: json.len() as u64,
    };
    counter
        .write_all(&skippable_frame(&compressed))
        .map_err(WriterError::Write)?;
    counter
        .write_all(&footer_frame(&position))
        .map_err(WriterError::Write)?;
    counter.flush().map_err(WriterError::Write)?;
    Ok(Written {
        toc_digest: Digest::of(&compressed),
        toc_position: Some(position),
        blob_digest: Digest::from_hasher(counter.hash),
        blob_size: counter.count,
        diff_id: Digest::from_hasher(tar_hash),
        tar_size,
    })
}
