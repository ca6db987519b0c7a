//! Extension headers and the member they describe (pure).
//!
//! The archive is read in the tar crate's raw mode, which yields GNU long
//! name (`L`), long link (`K`) and PAX local (`x`) headers as members of
//! their own. Their data is collected here and applied to the next real
//! member: the crate's own mode would parse PAX data by splitting at
//! newlines (see `pax`), which refuses valid binary xattrs and ACLs and lets
//! a value smuggle in a `path`, `size` or `uid` record of its own.
//!
//! Precedence follows Go's archive/tar and the tar crate: a GNU long name
//! beats a PAX `path`, which beats the header's (ustar prefix + name) field;
//! likewise for link names. PAX `uid`/`gid`/`mtime`/xattrs are read by
//! `meta`. Global headers (`g`) reach the caller as members (they create
//! nothing), as before.

use super::pax::{self, PaxError};

/// Why extension headers could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ExtError {
    #[error(transparent)]
    Pax(#[from] PaxError),
    #[error("two {0} headers describe the same member")]
    Duplicate(&'static str),
    #[error("PAX size record {0:?} is not a decimal number")]
    BadSize(String),
    #[error(
        "PAX size record {pax} differs from the header's size {header}, so tar readers \
         disagree on where the next member starts; rebuild the layer with a standard tar writer"
    )]
    SizeMismatch { pax: u64, header: u64 },
    #[error(
        "PAX record {0:?} marks a PAX-format GNU sparse file, which cvmd does not expand; \
         rebuild the layer without `--sparse` (or with `--format=gnu`)"
    )]
    PaxSparse(String),
    #[error("extension headers at the end of the archive describe no member")]
    Dangling,
}

/// The kinds of extension header taken out of the member stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extension {
    LongName,
    LongLink,
    Pax,
}

impl Extension {
    fn label(self) -> &'static str {
        match self {
            Extension::LongName => "GNU long name",
            Extension::LongLink => "GNU long link",
            Extension::Pax => "PAX",
        }
    }
}

/// Which extension `header` is, if any. Like the tar crate, only headers
/// with ustar or GNU magic count: an old-style header with such a type flag
/// is an ordinary (unsupported) member.
pub(super) fn extension_of(header: &tar::Header) -> Option<Extension> {
    if header.as_ustar().is_none() && header.as_gnu().is_none() {
        return None;
    }
    let kind = header.entry_type();
    if kind.is_gnu_longname() {
        Some(Extension::LongName)
    } else if kind.is_gnu_longlink() {
        Some(Extension::LongLink)
    } else if kind.is_pax_local_extensions() {
        Some(Extension::Pax)
    } else {
        None
    }
}

/// A member with its extension headers applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// Bytes of data: the PAX `size` if there is one, else the header's.
    pub size: u64,
    /// PAX records in archive order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Extension data waiting for the member it describes.
#[derive(Debug, Default)]
pub(super) struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    /// Records one extension header's data; a second one of the same kind
    /// before a member is refused, as the tar crate and Go do.
    pub(super) fn add(&mut self, ext: Extension, data: Vec<u8>) -> Result<(), ExtError> {
        let slot = match ext {
            Extension::LongName => &mut self.long_name,
            Extension::LongLink => &mut self.long_link,
            Extension::Pax => &mut self.pax,
        };
        if slot.is_some() {
            return Err(ExtError::Duplicate(ext.label()));
        }
        *slot = Some(data);
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }

    /// Applies (and clears) the pending extensions to the member `header`.
    pub(super) fn apply(&mut self, header: &tar::Header) -> Result<Member, ExtError> {
        let long_name = self.long_name.take();
        let long_link = self.long_link.take();
        let data = self.pax.take().unwrap_or_default();
        let records = pax::parse_records(&data)?;
        // Repeated keywords: the last one counts (Go's archive/tar). An
        // empty value deletes the override (POSIX pax "Extended Header
        // Keyword Descriptions"), leaving the header's field.
        let last = |key: &[u8]| {
            records
                .iter()
                .rev()
                .find(|r| r.key == key)
                .map(|r| r.value)
                .filter(|v| !v.is_empty())
        };
        // GNU tar `--format=posix --sparse` stores the holes' map in these
        // records or in the data; unpacking that as written would give a
        // file with wrong contents (or a `GNUSparseFile.0/` name) silently.
        if let Some(r) = records.iter().find(|r| r.key.starts_with(b"GNU.sparse.")) {
            return Err(ExtError::PaxSparse(
                String::from_utf8_lossy(r.key).into_owned(),
            ));
        }
        let header_size = header.entry_size().unwrap_or(u64::MAX);
        let size = match last(b"size") {
            None => header_size,
            Some(value) => {
                let text = String::from_utf8_lossy(value);
                if !value.iter().all(u8::is_ascii_digit) {
                    return Err(ExtError::BadSize(text.into_owned()));
                }
                let pax: u64 = text
                    .parse()
                    .map_err(|_| ExtError::BadSize(text.to_string()))?;
                // Go's archive/tar writes files over 8 GiB with size 0 in
                // the header; any other disagreement makes readers see
                // different members in one stream (a parser differential).
                if pax != header_size && header_size != 0 {
                    return Err(ExtError::SizeMismatch {
                        pax,
                        header: header_size,
                    });
                }
                pax
            }
        };
        let path = match (long_name, last(b"path")) {
            (Some(name), _) => strip_nul(name),
            (None, Some(path)) => path.to_vec(),
            (None, None) => header.path_bytes().into_owned(),
        };
        let link = match (long_link, last(b"linkpath")) {
            (Some(name), _) => Some(strip_nul(name)),
            (None, Some(link)) => Some(link.to_vec()),
            (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
        };
        let pax = records
            .iter()
            .map(|r| (r.key.to_vec(), r.value.to_vec()))
            .collect();
        Ok(Member {
            path,
            link,
            size,
            pax,
        })
    }
}

/// GNU tar writes long names with a terminating NUL; one is dropped, as the
/// tar crate does (any other NUL makes the name invalid later).
fn strip_nul(mut name: Vec<u8>) -> Vec<u8> {
    if name.last() == Some(&0) {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{EntryType, Header};

    fn header(name: &str, link: &str, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_path(name).unwrap();
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_size(size);
        h
    }

    fn rec(key: &str, value: &[u8]) -> Vec<u8> {
        crate::unpack::tests::pax_record(key, value)
    }

    #[test]
    fn no_extensions_keep_the_header_fields() {
        let m = Pending::default().apply(&header("a/b", "t", 0)).unwrap();
        assert_eq!((m.path, m.link), (b"a/b".to_vec(), Some(b"t".to_vec())));
        assert!(m.pax.is_empty());
    }

    #[test]
    fn gnu_long_names_beat_pax_paths_which_beat_the_header() {
        let mut p = Pending::default();
        let mut data = rec("path", b"pax/path");
        data.extend(rec("linkpath", b"pax/link"));
        p.add(Extension::Pax, data.clone()).unwrap();
        p.add(Extension::LongName, b"gnu/name\0".to_vec()).unwrap();
        let m = p.apply(&header("h", "hl", 0)).unwrap();
        assert_eq!(m.path, b"gnu/name");
        assert_eq!(m.link.as_deref(), Some(&b"pax/link"[..]));
        assert!(p.is_empty());

        p.add(Extension::Pax, data).unwrap();
        p.add(Extension::LongLink, b"gnu/link\0".to_vec()).unwrap();
        let m = p.apply(&header("h", "hl", 0)).unwrap();
        assert_eq!(m.path, b"pax/path");
        assert_eq!(m.link.as_deref(), Some(&b"gnu/link"[..]));
    }

    #[test]
    fn the_last_path_counts_and_an_empty_one_deletes_the_override() {
        let mut p = Pending::default();
        let mut data = rec("path", b"first");
        data.extend(rec("path", b"second"));
        p.add(Extension::Pax, data).unwrap();
        assert_eq!(p.apply(&header("h", "", 0)).unwrap().path, b"second");
        p.add(Extension::Pax, rec("path", b"")).unwrap();
        assert_eq!(p.apply(&header("h", "", 0)).unwrap().path, b"h");
    }

    #[test]
    fn records_with_newlines_reach_the_member_whole() {
        let acl = b"user::rwx\ngroup::r-x\nother::r-x\n";
        let mut data = rec("SCHILY.acl.access", acl);
        data.extend(rec("SCHILY.xattr.security.capability", b"\x01\n\x00"));
        let mut p = Pending::default();
        p.add(Extension::Pax, data).unwrap();
        let m = p.apply(&header("f", "", 0)).unwrap();
        assert_eq!(
            m.pax,
            [
                (b"SCHILY.acl.access".to_vec(), acl.to_vec()),
                (
                    b"SCHILY.xattr.security.capability".to_vec(),
                    b"\x01\n\x00".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn duplicate_extensions_are_refused() {
        let mut p = Pending::default();
        p.add(Extension::Pax, Vec::new()).unwrap();
        assert_eq!(
            p.add(Extension::Pax, Vec::new()),
            Err(ExtError::Duplicate("PAX"))
        );
        p.add(Extension::LongName, b"a".to_vec()).unwrap();
        assert_eq!(
            p.add(Extension::LongName, b"b".to_vec()),
            Err(ExtError::Duplicate("GNU long name"))
        );
    }

    #[test]
    fn pax_size_must_match_the_header_unless_that_says_zero() {
        let mut p = Pending::default();
        assert_eq!(p.apply(&header("f", "", 7)).unwrap().size, 7);
        p.add(Extension::Pax, rec("size", b"5")).unwrap();
        assert_eq!(p.apply(&header("f", "", 5)).unwrap().size, 5);
        // Go's layout for files over 8 GiB.
        p.add(Extension::Pax, rec("size", b"9000000000")).unwrap();
        assert_eq!(p.apply(&header("f", "", 0)).unwrap().size, 9_000_000_000);
        p.add(Extension::Pax, rec("size", b"5")).unwrap();
        assert_eq!(
            p.apply(&header("f", "", 512)),
            Err(ExtError::SizeMismatch {
                pax: 5,
                header: 512
            })
        );
        p.add(Extension::Pax, rec("size", b"-1")).unwrap();
        assert_eq!(
            p.apply(&header("f", "", 0)),
            Err(ExtError::BadSize("-1".into()))
        );
    }

    #[test]
    fn pax_sparse_files_are_refused_not_garbled() {
        let mut p = Pending::default();
        p.add(Extension::Pax, rec("GNU.sparse.major", b"1"))
            .unwrap();
        assert_eq!(
            p.apply(&header("f", "", 0)),
            Err(ExtError::PaxSparse("GNU.sparse.major".into()))
        );
    }

    #[test]
    fn malformed_pax_data_is_refused() {
        let mut p = Pending::default();
        p.add(Extension::Pax, b"99 path=a\n".to_vec()).unwrap();
        assert!(matches!(
            p.apply(&header("f", "", 0)),
            Err(ExtError::Pax(PaxError::Overrun { .. }))
        ));
    }

    #[test]
    fn extension_types_need_ustar_or_gnu_magic() {
        let mut h = Header::new_gnu();
        for (kind, want) in [
            (EntryType::GNULongName, Some(Extension::LongName)),
            (EntryType::GNULongLink, Some(Extension::LongLink)),
            (EntryType::XHeader, Some(Extension::Pax)),
            (EntryType::XGlobalHeader, None),
            (EntryType::Regular, None),
        ] {
            h.set_entry_type(kind);
            assert_eq!(extension_of(&h), want, "{kind:?}");
        }
        let mut old = Header::new_old();
        old.set_entry_type(EntryType::XHeader);
        assert_eq!(extension_of(&old), None);
    }
}
