//! The TOC (`stargz.index.json`, docs/estargz.md of stargz-snapshotter,
//! "TOC and TOCEntries") as it is serialized ([`RawToc`]), and the checked
//! index a lazy file system may trust ([`TocIndex`]): every name inside the
//! layer root, every regular file's bytes covered by verifiable chunks
//! whose compressed spans lie inside the blob before the TOC.
//!
//! zstd:chunked (containers/storage) writes the same CRFS-style entries;
//! [`TocFormat`] says which rules of the two apply: an eStargz chunk's span
//! runs to the next gzip member any chunk starts at, a zstd:chunked
//! chunk's is its own zstd frame, up to the file's next chunk or its
//! `endOffset`.

use std::collections::HashMap;

pub use super::error::TocError;
mod fields;
mod spans;

use super::modtime::{self, Timestamp};
use super::raw::{RawEntry, RawToc, PREFETCH_LANDMARK};
use cvmd_digest::Digest;
use fields::{digest_field, non_negative, normalize, parent_of, small};
use spans::OpenFile;

/// Which format's TOC this is: the entries are alike, the spans are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TocFormat {
    Estargz,
    ZstdChunked,
}

/// Bounds on a TOC, far above real layers; each is a refusal, not a cut.
#[derive(Debug, Clone, Copy)]
pub struct TocLimits {
    pub max_entries: usize,
    /// Bytes of TOC JSON (decompressed).
    pub max_toc_bytes: u64,
    /// Uncompressed bytes of one chunk: what a reader inflates and holds
    /// for one read.
    pub max_chunk_bytes: u64,
}

impl Default for TocLimits {
    fn default() -> Self {
        TocLimits {
            max_entries: 1_000_000,
            max_toc_bytes: 64 << 20,
            max_chunk_bytes: 16 << 20,
        }
    }
}

/// A regular file's bytes `[file_offset, file_offset + size)`: inflate the
/// blob's `[blob_offset, blob_offset + compressed_len)`, skip `inner_offset`
/// bytes, take `size`, check `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub blob_offset: u64,
    /// Up to the next gzip member a chunk starts at (or the TOC): may hold
    /// tar headers after the chunk's data, never another chunk's.
    pub compressed_len: u64,
    pub inner_offset: u64,
    pub size: u64,
    pub file_offset: u64,
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        /// The whole file's digest, when the TOC gives one.
        digest: Option<Digest>,
        chunks: Vec<Chunk>,
    },
    Symlink {
        target: String,
    },
    /// To another entry's path, always a regular file.
    Hardlink {
        target: String,
    },
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// What an entry's name makes it in overlayfs terms (OCI image-spec
/// "Whiteouts"), whatever its type: a lazy tree shows `Remove` as a 0:0
/// character device named by the target and `Opaque` as
/// `trusted.overlay.opaque=y` on the parent, as the unpacker writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteout<'a> {
    None,
    /// `DIR/.wh..wh..opq`: DIR hides its lower layers' content.
    Opaque,
    /// `DIR/.wh.NAME`: NAME of lower layers is deleted.
    Remove(&'a str),
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A checked TOC entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the layer root, `/`-separated, no `.`/`..`/empty
    /// components; `""` is the root itself.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Option<Timestamp>,
    /// Names and raw values; never `trusted.overlay.*` (dropped, as the
    /// unpacker drops them).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// A directory the TOC names no entry for, only children under it:
    /// 0755, owned by 0:0, as an unpacker creates a missing parent.
    pub implied: bool,
}

impl Entry {
    /// The last component of the path (`""` for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }

    /// Whether this entry is a whiteout or an opaque marker (names were
    /// checked at parse time: the target is never empty, `.` or `..`).
    pub fn whiteout(&self) -> Whiteout<'_> {
        let name = self.name();
        if name == OPAQUE_MARKER {
            Whiteout::Opaque
        } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            Whiteout::Remove(target)
        } else {
            Whiteout::None
        }
    }
}

/// A TOC that passed every check in [`TocIndex::parse`].
#[derive(Debug, Clone)]
pub struct TocIndex {
    /// In TOC order, implied directories where first needed; the root first.
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
    toc_offset: u64,
    format: TocFormat,
    /// Entries (by index) before the prefetch landmark, and the blob
    /// offset of the landmark's data.
    prefetch: Option<(Vec<usize>, u64)>,
}

impl TocIndex {
    /// Parses and checks TOC JSON. `toc_offset` is where the TOC's gzip
    /// member starts in the blob (the footer's value).
    pub fn parse(json: &[u8], toc_offset: u64, limits: &TocLimits) -> Result<Self, TocError> {
        Self::parse_as(TocFormat::Estargz, json, toc_offset, limits)
    }

    /// Parses and checks TOC JSON of `format`; `toc_offset` is where the
    /// TOC starts in the blob, the end of the file data (zstd:chunked: its
    /// skippable frame's header).
    pub fn parse_as(
        format: TocFormat,
        json: &[u8],
        toc_offset: u64,
        limits: &TocLimits,
    ) -> Result<Self, TocError> {
        if json.len() as u64 > limits.max_toc_bytes {
            return Err(TocError::TooLarge {
                limit: limits.max_toc_bytes,
            });
        }
        let raw: RawToc = serde_json::from_slice(json)?;
        Self::check_as(format, raw, toc_offset, limits)
    }

    /// Checks an already deserialized eStargz TOC.
    pub fn check(raw: RawToc, toc_offset: u64, limits: &TocLimits) -> Result<Self, TocError> {
        Self::check_as(TocFormat::Estargz, raw, toc_offset, limits)
    }

    /// Checks an already deserialized TOC of `format`.
    pub fn check_as(
        format: TocFormat,
        raw: RawToc,
        toc_offset: u64,
        limits: &TocLimits,
    ) -> Result<Self, TocError> {
        if raw.version != 1 {
            return Err(TocError::Version(raw.version));
        }
        if raw.entries.len() > limits.max_entries {
            return Err(TocError::TooManyEntries {
                count: raw.entries.len(),
                limit: limits.max_entries,
            });
        }
        let mut index = TocIndex {
            entries: vec![implied_dir(String::new())],
            by_path: HashMap::from([(String::new(), 0)]),
            toc_offset,
            format,
            prefetch: None,
        };
        let mut open: Option<OpenFile> = None;
        for raw in &raw.entries {
            let name = raw.name.as_str();
            if raw.kind == "chunk" {
                index.chunk(raw, open.as_mut(), toc_offset, limits)?;
                continue;
            }
            if let Some(file) = open.take() {
                index.close(&file)?;
            }
            let path = normalize(name)?;
            let entry = index.entry(raw, path.clone())?;
            let is_file = matches!(entry.kind, EntryKind::File { .. });
            let at = index.insert(entry, name)?;
            if is_file {
                let size = raw.size;
                let mut file = OpenFile {
                    index: at,
                    name: name.to_string(),
                    size,
                    next: 0,
                    end_offset: raw.end_offset,
                };
                if size > 0 {
                    index.chunk(raw, Some(&mut file), toc_offset, limits)?;
                }
                open = Some(file);
            }
            // zstd:chunked has no landmarks: such a file is content.
            if path == PREFETCH_LANDMARK && format == TocFormat::Estargz && index.prefetch.is_none()
            {
                let before = (1..at).filter(|&i| !index.entries[i].implied).collect();
                let landmark_offset = non_negative(name, "offset", raw.offset)?;
                index.prefetch = Some((before, landmark_offset));
            }
        }
        if let Some(file) = open.take() {
            index.close(&file)?;
        }
        index.check_hardlinks()?;
        index.measure_spans()?;
        Ok(index)
    }

    fn entry(&self, raw: &RawEntry, path: String) -> Result<Entry, TocError> {
        let name = raw.name.as_str();
        let missing = |field| TocError::Missing {
            name: name.to_string(),
            field,
        };
        let link = || -> Result<String, TocError> {
            if raw.link_name.is_empty() {
                return Err(missing("linkName"));
            }
            if raw.link_name.contains('\0') {
                return Err(TocError::Malformed {
                    name: name.to_string(),
                    field: "linkName",
                    value: raw.link_name.clone(),
                });
            }
            Ok(raw.link_name.clone())
        };
        let dev = || -> Result<(u32, u32), TocError> {
            let major = non_negative(name, "devMajor", raw.dev_major)?;
            let minor = non_negative(name, "devMinor", raw.dev_minor)?;
            Ok((
                small(name, "devMajor", major)?,
                small(name, "devMinor", minor)?,
            ))
        };
        let kind = match raw.kind.as_str() {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::File {
                size: raw.size,
                digest: match raw.digest.as_str() {
                    "" => None,
                    d => Some(digest_field(name, "digest", d)?),
                },
                chunks: Vec::new(),
            },
            "symlink" => EntryKind::Symlink { target: link()? },
            "hardlink" => EntryKind::Hardlink {
                target: normalize(&link()?)?,
            },
            "char" => {
                let (major, minor) = dev()?;
                EntryKind::Char { major, minor }
            }
            "block" => {
                let (major, minor) = dev()?;
                EntryKind::Block { major, minor }
            }
            "fifo" => EntryKind::Fifo,
            other => {
                return Err(TocError::UnknownType {
                    name: name.to_string(),
                    kind: other.chars().take(32).collect(),
                })
            }
        };
        if path.is_empty() && kind != EntryKind::Dir {
            return Err(TocError::BadName {
                name: name.to_string(),
                why: "it names the layer root but is not a directory",
            });
        }
        let mode = non_negative(name, "mode", raw.mode)?;
        let mtime = match raw.modtime.as_str() {
            "" => None,
            t => Some(modtime::parse(t).ok_or_else(|| TocError::Malformed {
                name: name.to_string(),
                field: "modtime",
                value: t.chars().take(40).collect(),
            })?),
        };
        let mut xattrs = Vec::with_capacity(raw.xattrs.len());
        for (key, value) in &raw.xattrs {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| TocError::Malformed {
                    name: name.to_string(),
                    field: "xattr value (base64)",
                    value: key.clone(),
                })?;
            if key.is_empty() || key.contains('\0') {
                return Err(TocError::Malformed {
                    name: name.to_string(),
                    field: "xattr name",
                    value: key.clone(),
                });
            }
            // As the unpacker does: overlayfs obeys these on a lower layer,
            // so a layer may not bring its own.
            if !key.starts_with("trusted.overlay.") {
                xattrs.push((key.clone(), bytes));
            }
        }
        Ok(Entry {
            path,
            kind,
            // Go's writer stores the type bits too (0o40755): kept apart.
            mode: u32::try_from(mode & 0o7777).unwrap_or(0),
            uid: small(name, "uid", raw.uid)?,
            gid: small(name, "gid", raw.gid)?,
            mtime,
            xattrs,
            implied: false,
        })
    }

    /// Adds `entry`, its missing parents implied; a directory named again
    /// takes the later metadata (as an unpacker does, dir over dir).
    fn insert(&mut self, entry: Entry, name: &str) -> Result<usize, TocError> {
        if let Some(&at) = self.by_path.get(&entry.path) {
            let old = &mut self.entries[at];
            if old.kind == EntryKind::Dir && entry.kind == EntryKind::Dir {
                *old = entry;
                return Ok(at);
            }
            return Err(TocError::Duplicate {
                name: name.to_string(),
            });
        }
        let mut missing = Vec::new();
        let mut p = parent_of(&entry.path);
        while let Some(parent) = p {
            match self.by_path.get(parent) {
                Some(&at) if self.entries[at].kind == EntryKind::Dir => break,
                Some(_) => {
                    return Err(TocError::ParentNotDir {
                        name: name.to_string(),
                        parent: parent.to_string(),
                    })
                }
                None => missing.push(parent.to_string()),
            }
            p = parent_of(parent);
        }
        for dir in missing.into_iter().rev() {
            self.push(implied_dir(dir));
        }
        Ok(self.push(entry))
    }

    fn push(&mut self, entry: Entry) -> usize {
        let at = self.entries.len();
        self.by_path.insert(entry.path.clone(), at);
        self.entries.push(entry);
        at
    }

    fn check_hardlinks(&self) -> Result<(), TocError> {
        for e in &self.entries {
            if let EntryKind::Hardlink { target } = &e.kind {
                let why = match self.by_path.get(target).map(|&i| &self.entries[i].kind) {
                    None => Some("is not in the TOC"),
                    Some(EntryKind::File { .. }) => None,
                    Some(_) => Some("is not a regular file"),
                };
                if let Some(why) = why {
                    return Err(TocError::HardlinkTarget {
                        name: e.path.clone(),
                        target: target.clone(),
                        why,
                    });
                }
            }
        }
        Ok(())
    }

    /// Every entry, the root first, then in TOC order (an implied
    /// directory just before its first child); a directory named twice
    /// appears once, with its last metadata.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path` (normalized as in [`Entry::path`]).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.by_path.get(path).map(|&i| &self.entries[i])
    }

    /// Where the TOC starts (its gzip member, or its skippable frame):
    /// the end of the file data.
    pub fn toc_offset(&self) -> u64 {
        self.toc_offset
    }

    /// Which format's rules it was checked by.
    pub fn format(&self) -> TocFormat {
        self.format
    }

    /// The prioritized files (those before `.prefetch.landmark`, in TOC
    /// order), or None when the layer has no prefetch landmark.
    pub fn prefetch_entries(&self) -> Option<impl Iterator<Item = &Entry>> {
        let (before, _) = self.prefetch.as_ref()?;
        Some(before.iter().map(|&i| &self.entries[i]))
    }

    /// The blob range holding the prioritized files' data, to fetch in one
    /// request before anything else; None without a prefetch landmark.
    pub fn prefetch_range(&self) -> Option<std::ops::Range<u64>> {
        self.prefetch.as_ref().map(|(_, end)| 0..*end)
    }
}

fn implied_dir(path: String) -> Entry {
    Entry {
        path,
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: None,
        xattrs: Vec::new(),
        implied: true,
    }
}
