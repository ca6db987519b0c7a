//! A checked TOC (eStargz or zstd:chunked) as the tree a lazy layer
//! serves: the layer's files as an overlay lower dir wants them (whiteouts
//! as 0/0 character devices, opaque dirs marked by xattr), without
//! eStargz's own metadata.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cvmd_lazyfs::{Chunk, Entry as LazyEntry, Kind, Meta, Tree, TreeBuilder, TreeError};

use crate::estargz::{is_metadata_name, EntryKind, TocFormat, TocIndex};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// What the kernel's overlay reads to hide a lower dir's entries.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// `dir/name` split at its last component.
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

/// The tree of `index`, or what in it the tree refuses.
pub fn build(index: &TocIndex) -> Result<Tree, TreeError> {
    // Opaque markers come after their dir in TOC order: found first.
    let opaque: HashSet<&str> = index
        .entries()
        .iter()
        .filter(|e| split(&e.path).1 == OPAQUE)
        .map(|e| split(&e.path).0)
        .collect();
    // The full pull unpacks a zstd:chunked layer's every file, landmarks too.
    let estargz = index.format() == TocFormat::Estargz;
    let mut builder = TreeBuilder::new();
    let mut links = Vec::new();
    for e in index.entries() {
        let (dir, name) = split(&e.path);
        if estargz && dir.is_empty() && is_metadata_name(name) || name == OPAQUE {
            continue;
        }
        let mtime = e.mtime.map_or(SystemTime::UNIX_EPOCH, |(secs, nanos)| {
            let at = Duration::new(secs.unsigned_abs(), nanos);
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + at
            } else {
                SystemTime::UNIX_EPOCH - at
            }
        });
        let mut meta = Meta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime,
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| (OsString::from(k), v.clone()))
                .collect(),
        };
        let (path, kind) = if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let path = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            // As the unpacker makes one: 0600, the unpacking root's.
            (meta.mode, meta.uid, meta.gid) = (0o600, 0, 0);
            meta.xattrs.clear();
            (path, Kind::CharDev { major: 0, minor: 0 })
        } else {
            let kind = match &e.kind {
                EntryKind::Dir => {
                    if opaque.contains(e.path.as_str()) {
                        meta.xattrs.push((OPAQUE_XATTR.into(), b"y".to_vec()));
                    }
                    Kind::Dir
                }
                EntryKind::File { size, chunks, .. } => Kind::File {
                    size: *size,
                    chunks: chunks
                        .iter()
                        .map(|c| Chunk {
                            file_offset: c.file_offset,
                            size: c.size,
                            blob_offset: c.blob_offset,
                            compressed_len: c.compressed_len,
                            inner_offset: c.inner_offset,
                            digest: c.digest.clone(),
                        })
                        .collect(),
                },
                EntryKind::Symlink { target } => Kind::Symlink {
                    target: PathBuf::from(target),
                },
                EntryKind::Hardlink { target } => {
                    links.push((e.path.clone(), target.clone()));
                    continue;
                }
                EntryKind::Char { major, minor } => Kind::CharDev {
                    major: *major,
                    minor: *minor,
                },
                EntryKind::Block { major, minor } => Kind::BlockDev {
                    major: *major,
                    minor: *minor,
                },
                EntryKind::Fifo => Kind::Fifo,
            };
            (e.path.clone(), kind)
        };
        builder.add(LazyEntry {
            path: PathBuf::from(path),
            kind,
            meta,
        })?;
    }
    for (path, target) in links {
        builder.add_hardlink(path, target)?;
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::estargz::TocLimits;

    /// The full pull drops an eStargz layer's landmarks but unpacks every
    /// file of a zstd:chunked one: the lazy tree must agree with each.
    #[test]
    fn a_landmark_is_estargz_metadata_but_zstd_chunked_content() {
        let d = Digest::of(b"\x0f").to_string();
        let json = serde_json::json!({"version": 1, "entries": [
            {"name": ".prefetch.landmark", "type": "reg", "size": 1, "offset": 10,
             "endOffset": 20, "chunkDigest": d},
            {"name": "a", "type": "reg", "size": 1, "offset": 30, "endOffset": 40,
             "chunkDigest": d},
        ]})
        .to_string();
        for (format, files) in [(TocFormat::Estargz, 1), (TocFormat::ZstdChunked, 2)] {
            let index =
                TocIndex::parse_as(format, json.as_bytes(), 100, &TocLimits::default()).unwrap();
            assert_eq!(build(&index).unwrap().files(), files, "{format:?}");
        }
    }
}
