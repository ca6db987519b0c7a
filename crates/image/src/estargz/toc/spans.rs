//! A regular file's chunks as the TOC lists them, and the compressed
//! span each is read from: an eStargz chunk's runs to the next gzip member
//! any chunk starts at (chunks may share a member, at inner offsets); a
//! zstd:chunked chunk is one frame, up to the file's next chunk or its
//! `endOffset`. Either way inside the data before the TOC, never shared.

use super::fields::{digest_field, non_negative};
use super::{Chunk, EntryKind, TocError, TocFormat, TocIndex, TocLimits};
use crate::estargz::raw::RawEntry;

/// A regular file whose chunk entries are still being read.
pub(super) struct OpenFile {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) next: u64,
    /// zstd:chunked: the `reg` entry's `endOffset`, where its last
    /// chunk's frame ends.
    pub(super) end_offset: i64,
}

impl TocIndex {
    /// Adds `raw` (a `reg` with data, or a `chunk`) as the next chunk of `file`.
    pub(super) fn chunk(
        &mut self,
        raw: &RawEntry,
        file: Option<&mut OpenFile>,
        toc_offset: u64,
        limits: &TocLimits,
    ) -> Result<(), TocError> {
        let name = raw.name.as_str();
        let Some(file) = file.filter(|f| f.name == name) else {
            return Err(TocError::OrphanChunk {
                name: name.to_string(),
            });
        };
        let file_offset = non_negative(name, "chunkOffset", raw.chunk_offset)?;
        if file_offset != file.next || file_offset >= file.size {
            return Err(TocError::ChunkGap {
                name: name.to_string(),
                expected: file.next,
                found: file_offset,
            });
        }
        let size = match non_negative(name, "chunkSize", raw.chunk_size)? {
            0 => file.size - file_offset,
            n => n.min(file.size - file_offset),
        };
        if size > limits.max_chunk_bytes {
            return Err(TocError::ChunkTooLarge {
                name: name.to_string(),
                size,
                limit: limits.max_chunk_bytes,
            });
        }
        let zstd = self.format == TocFormat::ZstdChunked;
        // containers/storage gives a file of one chunk only its `digest`.
        let whole_file = zstd && raw.kind == "reg" && size == file.size;
        let digest = match (raw.chunk_digest.as_str(), raw.digest.as_str()) {
            ("", d) if whole_file && !d.is_empty() => digest_field(name, "digest", d)?,
            ("", _) => {
                return Err(TocError::Missing {
                    name: name.to_string(),
                    field: "chunkDigest",
                })
            }
            (d, _) => digest_field(name, "chunkDigest", d)?,
        };
        // A run of zeros is still stored in its frame, with its digest:
        // read like data.
        if zstd && !matches!(raw.chunk_type.as_str(), "" | "zeros") {
            return Err(TocError::ChunkType {
                name: name.to_string(),
                kind: raw.chunk_type.chars().take(32).collect(),
            });
        }
        let blob_offset = non_negative(name, "offset", raw.offset)?;
        if blob_offset >= toc_offset {
            return Err(TocError::SpanOutOfRange {
                name: name.to_string(),
                offset: blob_offset,
                toc_offset,
            });
        }
        let inner_offset = if zstd {
            0
        } else {
            non_negative(name, "innerOffset", raw.inner_offset)?
        };
        file.next = file_offset + size;
        if let EntryKind::File { chunks, .. } = &mut self.entries[file.index].kind {
            // A zstd:chunked chunk's frame ends where the file's next one starts.
            if let Some(prev) = chunks.last_mut().filter(|_| zstd) {
                if blob_offset <= prev.blob_offset {
                    return Err(TocError::SpanEnd {
                        name: name.to_string(),
                        offset: prev.blob_offset,
                        end: blob_offset,
                        toc_offset,
                    });
                }
                prev.compressed_len = blob_offset - prev.blob_offset;
            }
            chunks.push(Chunk {
                blob_offset,
                compressed_len: 0,
                inner_offset,
                size,
                file_offset,
                digest,
            });
        }
        Ok(())
    }

    /// Ends a regular file: its chunks must cover it; a zstd:chunked
    /// file's last frame ends at its `endOffset`, before the TOC.
    pub(super) fn close(&mut self, file: &OpenFile) -> Result<(), TocError> {
        close(file)?;
        if self.format != TocFormat::ZstdChunked {
            return Ok(());
        }
        let toc_offset = self.toc_offset;
        if let EntryKind::File { chunks, .. } = &mut self.entries[file.index].kind {
            if let Some(last) = chunks.last_mut() {
                let end = u64::try_from(file.end_offset).unwrap_or(0);
                if end <= last.blob_offset || end > toc_offset {
                    return Err(TocError::SpanEnd {
                        name: file.name.clone(),
                        offset: last.blob_offset,
                        end,
                        toc_offset,
                    });
                }
                last.compressed_len = end - last.blob_offset;
            }
        }
        Ok(())
    }

    /// zstd:chunked: refuses chunks whose frames overlap (each chunk is a
    /// frame of its own, so no two may share a byte).
    fn check_frames(&self) -> Result<(), TocError> {
        // (blob offset, compressed length, entry index)
        let mut all: Vec<(u64, u64, usize)> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let EntryKind::File { chunks, .. } = &e.kind {
                all.extend(chunks.iter().map(|c| (c.blob_offset, c.compressed_len, i)));
            }
        }
        all.sort_unstable();
        for pair in all.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.0.saturating_add(a.1) > b.0 {
                return Err(TocError::SpansOverlap {
                    name: self.entries[a.2].path.clone(),
                    other: self.entries[b.2].path.clone(),
                    offset: b.0,
                });
            }
        }
        Ok(())
    }

    /// Gives each chunk its compressed length (to the next member a chunk
    /// starts at, or the TOC) and refuses chunks sharing a member whose
    /// inflated ranges overlap.
    pub(super) fn measure_spans(&mut self) -> Result<(), TocError> {
        if self.format == TocFormat::ZstdChunked {
            return self.check_frames();
        }
        // (blob offset, inner offset, size, entry index)
        let mut all: Vec<(u64, u64, u64, usize)> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let EntryKind::File { chunks, .. } = &e.kind {
                all.extend(
                    chunks
                        .iter()
                        .map(|c| (c.blob_offset, c.inner_offset, c.size, i)),
                );
            }
        }
        all.sort_unstable();
        for pair in all.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.0 == b.0 && a.1.saturating_add(a.2) > b.1 {
                return Err(TocError::SpansOverlap {
                    name: self.entries[a.3].path.clone(),
                    other: self.entries[b.3].path.clone(),
                    offset: a.0,
                });
            }
        }
        let mut starts: Vec<u64> = all.iter().map(|c| c.0).collect();
        starts.dedup();
        let toc_offset = self.toc_offset;
        let end_of = |offset: u64| -> u64 {
            let next = starts.partition_point(|&s| s <= offset);
            starts.get(next).copied().unwrap_or(toc_offset)
        };
        for e in &mut self.entries {
            if let EntryKind::File { chunks, .. } = &mut e.kind {
                for c in chunks {
                    c.compressed_len = end_of(c.blob_offset) - c.blob_offset;
                }
            }
        }
        Ok(())
    }
}

fn close(file: &OpenFile) -> Result<(), TocError> {
    if file.next != file.size {
        return Err(TocError::ChunksShort {
            name: file.name.clone(),
            covered: file.next,
            size: file.size,
        });
    }
    Ok(())
}
