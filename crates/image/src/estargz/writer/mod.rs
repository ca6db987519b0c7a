//! A layer tar into an eStargz blob ("The structure" in docs/estargz.md):
//! the same entries, each non-empty regular file's data split into chunks
//! that start gzip members of their own, a landmark, the TOC as the last
//! tar entry in a member of its own, and the footer. Streamed: one chunk of
//! one file is in memory at a time, plus the TOC's entries.
//!
//! The same walk writes zstd:chunked ([`Layout::ZstdChunked`], through
//! `crate::zstd_chunked::writer`): zstd frames instead of gzip members,
//! each chunk a frame of its own ending with its data, no landmarks, and
//! the TOC in a skippable frame after the tar.
//!
//! Names are written cleaned (relative, no `.`/`..`), so the tar and the
//! TOC say the same thing; an entry a TOC cannot hold (a non-UTF-8 name, a
//! name given twice) is refused rather than silently changed.

mod options;

pub use options::{Layout, WriteOptions, WriterError, Written};

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::footer::footer_bytes;
use super::modtime;
use super::raw::{
    is_metadata_name, RawEntry, RawToc, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME,
};
use super::sink::{pax_record, set_field, Codec, Sink};
use super::toc::{TocIndex, TocLimits};
use cvmd_digest::Digest;

/// What the spec's reference writer uses, and what a lazy read inflates at most.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// The landmark files' one byte of content.
const LANDMARK_CONTENT: u8 = 0x0f;

/// Converts the layer tar `open()` yields into an eStargz blob on `out`.
/// With a prefetch list the tar is read twice (prioritized files first),
/// so `open` must give the same stream each time.
pub fn write_estargz<R: Read, W: Write>(
    open: impl FnMut() -> io::Result<R>,
    out: W,
    opts: &WriteOptions,
) -> Result<Written, WriterError> {
    write_layer(open, out, opts, Layout::Estargz)
}

/// Converts the layer tar `open()` yields into a blob of `layout` on `out`.
pub fn write_layer<R: Read, W: Write>(
    mut open: impl FnMut() -> io::Result<R>,
    out: W,
    opts: &WriteOptions,
    layout: Layout,
) -> Result<Written, WriterError> {
    let read_err = |source| WriterError::Read {
        after: String::new(),
        source,
    };
    let codec = match layout {
        Layout::Estargz => Codec::Gzip(opts.level),
        Layout::ZstdChunked => Codec::Zstd(opts.zstd_level),
    };
    let mut w = Writer {
        sink: Sink::new(out, codec).map_err(WriterError::Write)?,
        entries: Vec::new(),
        seen: HashSet::new(),
        chunk_size: opts.chunk_size.max(1),
        buf: Vec::new(),
        layout,
        zstd_level: opts.zstd_level,
    };
    if opts.prefetch.is_empty() {
        w.landmark(NO_PREFETCH_LANDMARK)?;
        w.pass(open().map_err(read_err)?, &|_| true)?;
    } else {
        let first: HashSet<String> = opts.prefetch.iter().filter_map(|p| clean(p).ok()).collect();
        let prioritized = |path: &str, kind: tar::EntryType| {
            first.contains(path) && (kind.is_file() || kind == tar::EntryType::Continuous)
        };
        w.pass(open().map_err(read_err)?, &|e| prioritized(&e.0, e.1))?;
        // None of them in this layer: the spec's "no files in A" case.
        w.landmark(if w.entries.is_empty() {
            NO_PREFETCH_LANDMARK
        } else {
            PREFETCH_LANDMARK
        })?;
        w.pass(open().map_err(read_err)?, &|e| !prioritized(&e.0, e.1))?;
    }
    w.finish()
}

struct Writer<W: Write> {
    sink: Sink<W>,
    entries: Vec<RawEntry>,
    seen: HashSet<String>,
    chunk_size: u64,
    buf: Vec<u8>,
    layout: Layout,
    zstd_level: i32,
}

/// A member's cleaned path and type, for the pass filter.
type Key = (String, tar::EntryType);

impl<W: Write> Writer<W> {
    fn write_err(e: io::Error) -> WriterError {
        WriterError::Write(e)
    }

    /// Copies the entries of `tar` that `take` accepts.
    fn pass<R: Read>(&mut self, tar: R, take: &dyn Fn(&Key) -> bool) -> Result<(), WriterError> {
        let mut archive = tar::Archive::new(tar);
        let mut last = String::new();
        let read_err = |after: &str, source| WriterError::Read {
            after: after.to_string(),
            source,
        };
        for entry in archive.entries().map_err(|e| read_err(&last, e))? {
            let mut entry = entry.map_err(|e| read_err(&last, e))?;
            let raw_name = entry.path_bytes().into_owned();
            let name = String::from_utf8(raw_name).map_err(|e| WriterError::NotUtf8 {
                name: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })?;
            last.clone_from(&name);
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let path = clean(&name)?;
            // An eStargz layer converted again: its metadata is not content.
            if is_metadata_name(&path) {
                continue;
            }
            if !take(&(path.clone(), kind)) {
                continue;
            }
            self.entry(&mut entry, &name, path).map_err(|e| match e {
                WriterError::Read { source, .. } => read_err(&name, source),
                e => e,
            })?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        path: String,
    ) -> Result<(), WriterError> {
        let h = entry.header().clone();
        let kind = h.entry_type();
        let read_err = |source| WriterError::Read {
            after: name.to_string(),
            source,
        };
        let (toc_kind, type_bits) = match kind {
            k if k.is_file() || k == tar::EntryType::Continuous || k.is_gnu_sparse() => {
                ("reg", libc::S_IFREG)
            }
            tar::EntryType::Directory => ("dir", libc::S_IFDIR),
            tar::EntryType::Symlink => ("symlink", libc::S_IFLNK),
            tar::EntryType::Link => ("hardlink", libc::S_IFREG),
            tar::EntryType::Char => ("char", libc::S_IFCHR),
            tar::EntryType::Block => ("block", libc::S_IFBLK),
            tar::EntryType::Fifo => ("fifo", libc::S_IFIFO),
            other => {
                return Err(WriterError::Unsupported {
                    name: name.to_string(),
                    kind: char::from(other.as_byte()),
                })
            }
        };
        if path.is_empty() && toc_kind != "dir" {
            return Err(WriterError::Escapes {
                name: name.to_string(),
            });
        }
        if !self.seen.insert(path.clone()) && toc_kind != "dir" {
            return Err(WriterError::Duplicate {
                name: name.to_string(),
            });
        }
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(read_err)? {
            for ext in exts {
                let ext = ext.map_err(read_err)?;
                let key = String::from_utf8_lossy(ext.key_bytes()).into_owned();
                // Regenerated below from the cleaned entry.
                if !matches!(key.as_str(), "path" | "linkpath" | "size") {
                    pax.push((key, ext.value_bytes().to_vec()));
                }
            }
        }
        let pax_num = |key: &str| -> Option<&[u8]> {
            pax.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        };
        let num = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
        let uid = pax_num("uid").and_then(num).or(h.uid().ok()).unwrap_or(0);
        let gid = pax_num("gid").and_then(num).or(h.gid().ok()).unwrap_or(0);
        let mtime = pax_num("mtime")
            .and_then(pax_time)
            .unwrap_or((i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0), 0));
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let link = match entry.link_name_bytes() {
            Some(l) => {
                Some(
                    String::from_utf8(l.into_owned()).map_err(|_| WriterError::NotUtf8 {
                        name: name.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let link = match (toc_kind, link) {
            // A hardlink names a member of this layer, as the unpacker reads it.
            ("hardlink", Some(l)) => Some(clean(&l)?),
            (_, l) => l,
        };
        let size = if toc_kind == "reg" { entry.size() } else { 0 };
        let mut xattrs = BTreeMap::new();
        for (k, v) in &pax {
            if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                use base64::Engine as _;
                xattrs.insert(
                    x.to_string(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                );
            }
        }
        let (major, minor) = match toc_kind {
            "char" | "block" => (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            _ => (0, 0),
        };
        let raw = RawEntry {
            name: if toc_kind == "dir" && !path.is_empty() {
                format!("{path}/")
            } else if path.is_empty() {
                "./".into()
            } else {
                path.clone()
            },
            kind: toc_kind.into(),
            size,
            modtime: modtime::format(mtime),
            link_name: link.clone().unwrap_or_default(),
            // containers/storage writes the tar header's mode as is.
            mode: i64::from(match self.layout {
                Layout::Estargz => mode | type_bits,
                Layout::ZstdChunked => mode,
            }),
            uid,
            gid,
            user_name: h.username().ok().flatten().unwrap_or("").to_string(),
            group_name: h.groupname().ok().flatten().unwrap_or("").to_string(),
            dev_major: i64::from(major),
            dev_minor: i64::from(minor),
            xattrs,
            ..Default::default()
        };

        // The header as written: a GNU header (base-256 numbers for big
        // ids and sizes), long names and links in PAX.
        let mut out = tar::Header::new_gnu();
        out.set_entry_type(match kind {
            k if k.is_gnu_sparse() || k == tar::EntryType::Continuous => tar::EntryType::Regular,
            k => k,
        });
        out.set_mode(mode);
        out.set_uid(uid);
        out.set_gid(gid);
        out.set_mtime(u64::try_from(mtime.0).unwrap_or(0));
        out.set_size(size);
        if let Ok(Some(u)) = h.username() {
            let _ = out.set_username(u);
        }
        if let Ok(Some(g)) = h.groupname() {
            let _ = out.set_groupname(g);
        }
        if matches!(toc_kind, "char" | "block") {
            out.set_device_major(major).map_err(Self::write_err)?;
            out.set_device_minor(minor).map_err(Self::write_err)?;
        }
        let tar_name = match toc_kind {
            "dir" if path.is_empty() => "./".to_string(),
            "dir" => format!("{path}/"),
            _ => path.clone(),
        };
        if !set_field(&mut out.as_old_mut().name, &tar_name) {
            pax.push(("path".into(), tar_name.into_bytes()));
        }
        if let Some(l) = &link {
            if !set_field(&mut out.as_old_mut().linkname, l) {
                pax.push(("linkpath".into(), l.clone().into_bytes()));
            }
        }
        out.set_cksum();
        let mut raw = raw;
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &pax {
                data.extend(pax_record(k, v));
            }
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(tar::EntryType::XHeader);
            set_field(&mut ph.as_old_mut().name, "PaxHeaders/entry");
            ph.set_mode(0o644);
            ph.set_size(data.len() as u64);
            ph.set_cksum();
            self.sink
                .write_all(ph.as_bytes())
                .map_err(Self::write_err)?;
            self.sink.write_all(&data).map_err(Self::write_err)?;
            self.pad(data.len() as u64)?;
        }
        self.sink
            .write_all(out.as_bytes())
            .map_err(Self::write_err)?;
        if size > 0 {
            self.data(entry, name, size, &mut raw)?;
        } else {
            self.entries.push(raw);
        }
        Ok(())
    }

    /// Copies `size` bytes of file data, a gzip member per chunk, and adds
    /// the file's TOC entries (`reg`, then a `chunk` per further chunk).
    fn data(
        &mut self,
        data: &mut dyn Read,
        name: &str,
        size: u64,
        raw: &mut RawEntry,
    ) -> Result<(), WriterError> {
        let first = self.entries.len();
        let mut file_hash = Sha256::new();
        let mut at = 0u64;
        while at < size {
            let len = (size - at).min(self.chunk_size);
            let offset = self.sink.new_member().map_err(Self::write_err)?;
            self.buf.clear();
            let got = data
                .take(len)
                .read_to_end(&mut self.buf)
                .map_err(|source| WriterError::Read {
                    after: name.to_string(),
                    source,
                })?;
            if got as u64 != len {
                return Err(WriterError::Truncated {
                    name: name.to_string(),
                    expected: size,
                    got: at + got as u64,
                });
            }
            self.sink.write_all(&self.buf).map_err(Self::write_err)?;
            file_hash.update(&self.buf);
            let chunk_digest = Digest::of(&self.buf).to_string();
            let last = at + len == size;
            let zstd = self.layout == Layout::ZstdChunked;
            // A zstd:chunked chunk's frame holds its data alone.
            let end = if zstd {
                self.sink.new_member().map_err(Self::write_err)?
            } else {
                0
            };
            // eStargz: 0 on the last chunk, "the rest"; zstd:chunked, as
            // containers/storage reads it: each chunk's size.
            let chunk_size = if last && !zstd {
                0
            } else {
                i64::try_from(len).unwrap_or(0)
            };
            let mut e = if at == 0 {
                raw.clone()
            } else {
                RawEntry {
                    name: raw.name.clone(),
                    kind: "chunk".into(),
                    ..Default::default()
                }
            };
            e.offset = i64::try_from(offset).unwrap_or(i64::MAX);
            e.chunk_offset = i64::try_from(at).unwrap_or(i64::MAX);
            e.chunk_size = chunk_size;
            e.chunk_digest = chunk_digest;
            self.entries.push(e);
            at += len;
            if zstd && last {
                self.entries[first].end_offset = i64::try_from(end).unwrap_or(i64::MAX);
                // A file of one chunk: only `digest`, as containers/storage
                // writes it.
                if self.entries.len() == first + 1 {
                    self.entries[first].chunk_digest.clear();
                    self.entries[first].chunk_size = 0;
                }
            }
        }
        self.entries[first].digest = Digest::from_hasher(file_hash).to_string();
        self.pad(size)
    }

    fn pad(&mut self, len: u64) -> Result<(), WriterError> {
        let pad = usize::try_from(len.wrapping_neg() % 512).unwrap_or(0);
        self.sink
            .write_all(&[0u8; 512][..pad])
            .map_err(Self::write_err)
    }

    fn landmark(&mut self, name: &str) -> Result<(), WriterError> {
        if self.layout == Layout::ZstdChunked {
            return Ok(());
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        set_field(&mut h.as_old_mut().name, name);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_mtime(0);
        h.set_cksum();
        self.sink.write_all(h.as_bytes()).map_err(Self::write_err)?;
        let mut raw = RawEntry {
            name: name.into(),
            kind: "reg".into(),
            size: 1,
            mode: i64::from(0o644 | libc::S_IFREG),
            ..Default::default()
        };
        self.data(&mut &[LANDMARK_CONTENT][..], name, 1, &mut raw)
    }

    /// The TOC entry in a member of its own, the end of the archive, the footer.
    fn finish(mut self) -> Result<Written, WriterError> {
        if self.layout == Layout::ZstdChunked {
            self.sink.write_all(&[0u8; 1024]).map_err(Self::write_err)?;
            let entries = std::mem::take(&mut self.entries);
            return crate::zstd_chunked::writer::finish(self.sink, entries, self.zstd_level);
        }
        let toc_offset = self.sink.new_member().map_err(Self::write_err)?;
        let toc = RawToc {
            version: 1,
            entries: std::mem::take(&mut self.entries),
        };
        let json = serde_json::to_vec(&toc).map_err(|e| WriterError::Write(e.into()))?;
        // What a reader will check: refuse to publish a TOC it would refuse.
        TocIndex::check(toc, toc_offset, &TocLimits::default())?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        set_field(&mut h.as_old_mut().name, TOC_NAME);
        h.set_mode(0o444);
        h.set_size(json.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        self.sink.write_all(h.as_bytes()).map_err(Self::write_err)?;
        self.sink.write_all(&json).map_err(Self::write_err)?;
        self.pad(json.len() as u64)?;
        self.sink.write_all(&[0u8; 1024]).map_err(Self::write_err)?;
        let (mut counter, tar_hash, tar_size) = self.sink.finish().map_err(Self::write_err)?;
        counter
            .write_all(&footer_bytes(toc_offset))
            .map_err(Self::write_err)?;
        counter.flush().map_err(Self::write_err)?;
        Ok(Written {
            toc_digest: Digest::of(&json),
            toc_position: None,
            blob_digest: Digest::from_hasher(counter.hash),
            blob_size: counter.count,
            diff_id: Digest::from_hasher(tar_hash),
            tar_size,
        })
    }
}

/// A PAX time, `secs[.frac]`.
fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some((secs, nanos))
}

/// A member name cleaned as the unpacker reads it: leading `/` and `.`
/// components dropped, `..` resolved lexically and refused once it climbs
/// out; `""` for the root.
fn clean(name: &str) -> Result<String, WriterError> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(WriterError::Escapes {
                        name: name.to_string(),
                    });
                }
            }
            c => parts.push(c),
        }
    }
    if name.contains('\0') {
        return Err(WriterError::Escapes {
            name: name.to_string(),
        });
    }
    Ok(parts.join("/"))
}
