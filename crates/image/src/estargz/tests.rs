//! Hostile TOCs and footers refused with their message; the writer's blobs
//! read back through the footer, the TOC and each chunk alone.

use std::io::Read;

use flate2::read::MultiGzDecoder;
use serde_json::json;

use super::footer::{
    footer_bytes, parse_footer, read_toc, read_toc_from_tail, FooterError, TailToc, FOOTER_SIZE,
};
use super::raw::*;
use super::toc::*;
use super::writer::{write_estargz, WriteOptions};
use cvmd_digest::Digest;

const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn parse(entries: serde_json::Value) -> Result<TocIndex, TocError> {
    let toc = json!({ "version": 1, "entries": entries });
    TocIndex::parse(toc.to_string().as_bytes(), 10_000, &TocLimits::default())
}

fn refused(entries: serde_json::Value, wanted: &str) {
    let err = parse(entries).expect_err("hostile TOC accepted");
    let msg = err.to_string();
    assert!(msg.contains(wanted), "{msg:?} lacks {wanted:?}");
    assert!(!msg.contains('\n'), "{msg:?} is not one line");
}

fn reg(name: &str, size: u64, offset: u64) -> serde_json::Value {
    json!({"name": name, "type": "reg", "size": size, "offset": offset, "mode": 0o644, "chunkDigest": D})
}

#[test]
fn a_plain_toc_is_indexed_with_implied_parents_and_spans() {
    let idx = parse(json!([
        {"name": "bin/", "type": "dir", "mode": 0o40755, "modtime": "2019-08-20T10:30:43Z"},
        reg("bin/busybox", 10, 100),
        {"name": "usr/lib/x", "type": "symlink", "linkName": "../../bin/busybox", "mode": 0o777},
        {"name": "bin/sh", "type": "hardlink", "linkName": "bin/busybox", "mode": 0o644},
        {"name": "big", "type": "reg", "size": 25, "offset": 200, "chunkSize": 10, "chunkDigest": D, "mode": 0o600},
        {"name": "big", "type": "chunk", "offset": 300, "chunkOffset": 10, "chunkSize": 10, "chunkDigest": D},
        {"name": "big", "type": "chunk", "offset": 400, "chunkOffset": 20, "chunkDigest": D},
        {"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3, "mode": 0o666},
        {"name": "x", "type": "reg", "mode": 0o644, "xattrs": {"user.a": "aGk=", "trusted.overlay.opaque": "eQ=="}},
    ]))
    .unwrap();
    assert_eq!(idx.get("bin").unwrap().mode, 0o755);
    assert_eq!(idx.get("bin").unwrap().mtime, Some((1_566_297_043, 0)));
    assert!(idx.get("usr").unwrap().implied && idx.get("usr/lib").unwrap().implied);
    let EntryKind::File { chunks, .. } = &idx.get("big").unwrap().kind else {
        panic!()
    };
    let spans: Vec<_> = chunks
        .iter()
        .map(|c| (c.blob_offset, c.compressed_len, c.file_offset, c.size))
        .collect();
    assert_eq!(
        spans,
        [(200, 100, 0, 10), (300, 100, 10, 10), (400, 9_600, 20, 5)]
    );
    let EntryKind::File { chunks, .. } = &idx.get("bin/busybox").unwrap().kind else {
        panic!()
    };
    assert_eq!(chunks[0].compressed_len, 100);
    assert_eq!(
        idx.get("x").unwrap().xattrs,
        [("user.a".into(), b"hi".to_vec())]
    );
    assert!(idx.prefetch_entries().is_none());
}

#[test]
fn entries_outside_the_root_are_refused() {
    refused(json!([reg("/etc/passwd", 1, 1)]), "it is absolute");
    refused(json!([reg("../etc/passwd", 1, 1)]), "'..' component");
    refused(json!([reg("a/../../x", 1, 1)]), "'..' component");
    refused(json!([reg("a//b", 1, 1)]), "empty component");
    refused(json!([reg("", 1, 1)]), "it is empty");
    refused(json!([reg("a\u{0}b", 1, 1)]), "NUL");
    refused(json!([reg("./", 1, 1)]), "names the layer root");
    refused(
        json!([reg("f", 1, 1), {"name": "l", "type": "hardlink", "linkName": "../f"}]),
        "'..' component",
    );
    refused(json!([reg("a/.wh.b/c", 1, 1)]), "not its last component");
    refused(json!([reg("a/.wh..", 1, 1)]), "whiteout of nothing");
}

#[test]
fn malformed_entries_are_refused() {
    refused(json!([reg("a", 1, 1), reg("a", 1, 2)]), "names \"a\" twice");
    refused(json!([reg("a", 1, 1), reg("a/b", 1, 2)]), "not a directory");
    refused(json!([{"name": "a", "type": "sock"}]), "unknown type");
    refused(
        json!([{"name": "l", "type": "hardlink", "linkName": "nope"}]),
        "is not in the TOC",
    );
    refused(
        json!([{"name": "d/", "type": "dir"}, {"name": "l", "type": "hardlink", "linkName": "d"}]),
        "is not a regular file",
    );
    refused(json!([{"name": "s", "type": "symlink"}]), "lacks linkName");
    refused(
        json!([{"name": "c", "type": "char", "devMajor": -1}]),
        "devMajor -1, out of range",
    );
    refused(
        json!([{"name": "a", "type": "dir", "uid": 1u64 << 40}]),
        "uid",
    );
    refused(
        json!([{"name": "a", "type": "dir", "modtime": "soon"}]),
        "modtime",
    );
    refused(
        json!([{"name": "a", "type": "dir", "xattrs": {"user.a": "!!"}}]),
        "xattr value",
    );
    let toc = json!({"version": 2, "entries": []}).to_string();
    let err = TocIndex::parse(toc.as_bytes(), 1, &TocLimits::default()).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    let err = TocIndex::parse(b"{", 1, &TocLimits::default()).unwrap_err();
    assert!(err.to_string().contains("not valid TOC JSON"), "{err}");
}

#[test]
fn chunks_must_cover_files_with_digests() {
    let mut no_digest = reg("a", 5, 1);
    no_digest["chunkDigest"] = json!("");
    refused(json!([no_digest]), "lacks chunkDigest");
    let mut bad_digest = reg("a", 5, 1);
    bad_digest["chunkDigest"] = json!("md5:abc");
    refused(json!([bad_digest]), "malformed chunkDigest");
    let mut short = reg("a", 10, 1);
    short["chunkSize"] = json!(4);
    refused(json!([short]), "cover 4 of its 10 bytes");
    let mut first = reg("a", 10, 1);
    first["chunkSize"] = json!(4);
    refused(
        json!([first, {"name": "a", "type": "chunk", "offset": 50, "chunkOffset": 6, "chunkDigest": D}]),
        "starts at file offset 6, expected 4",
    );
    refused(
        json!([{"name": "a", "type": "chunk", "offset": 5, "chunkDigest": D}]),
        "follows no regular file",
    );
    refused(json!([reg("a", 32 << 20, 1)]), "over the bound of 16777216");
}

#[test]
fn spans_out_of_range_or_overlapping_are_refused() {
    refused(
        json!([reg("a", 5, 10_000)]),
        "outside the data before the TOC",
    );
    refused(
        json!([reg("a", 5, 99_999)]),
        "outside the data before the TOC",
    );
    let mut neg = reg("a", 5, 0);
    neg["offset"] = json!(-5);
    refused(json!([neg]), "offset -5, out of range");
    refused(
        json!([reg("a", 5, 100), reg("b", 5, 100)]),
        "claim overlapping compressed bytes",
    );
    let mut inner = reg("b", 5, 100);
    inner["innerOffset"] = json!(3);
    refused(
        json!([reg("a", 5, 100), inner]),
        "claim overlapping compressed bytes",
    );
    // Two small files packed in one member, one after the other.
    let mut packed = reg("b", 5, 100);
    packed["innerOffset"] = json!(5);
    parse(json!([reg("a", 5, 100), packed])).unwrap();
}

#[test]
fn huge_tocs_are_refused_before_or_after_parsing() {
    let limits = TocLimits {
        max_entries: 3,
        ..TocLimits::default()
    };
    let toc = json!({"version": 1, "entries": [
        {"name": "a", "type": "dir"}, {"name": "b", "type": "dir"},
        {"name": "c", "type": "dir"}, {"name": "d", "type": "dir"}]});
    let err = TocIndex::parse(toc.to_string().as_bytes(), 1, &limits).unwrap_err();
    assert_eq!(err.to_string(), "TOC has 4 entries, over the bound of 3");
    let limits = TocLimits {
        max_toc_bytes: 10,
        ..TocLimits::default()
    };
    let err = TocIndex::parse(toc.to_string().as_bytes(), 1, &limits).unwrap_err();
    assert!(
        err.to_string().contains("larger than the 10 bytes"),
        "{err}"
    );
    // The real bound: a million entries and one.
    let many: Vec<_> = (0..1_000_001)
        .map(|i| json!({"name": format!("d{i}"), "type": "dir"}))
        .collect();
    let err = parse(json!(many)).unwrap_err();
    assert!(err.to_string().contains("1000001 entries"), "{err}");
}

#[test]
fn bad_footers_are_refused_by_what_is_wrong() {
    let good = footer_bytes(0x1234);
    assert_eq!(parse_footer(&good, 100_000).unwrap(), 0x1234);
    let err = |f: &[u8], size| parse_footer(f, size).unwrap_err().to_string();
    assert!(err(&good[..20], 20).contains("too short"));
    assert!(err(&good, 0x1234).contains("outside the blob"));
    let mut plain = good;
    plain[3] = 0;
    assert!(err(&plain, 100_000).contains("no 26-byte extra field"));
    let mut not_gzip = good;
    not_gzip[0] = b'x';
    assert!(err(&not_gzip, 100_000).contains("not a gzip member"));
    let mut no_magic = good;
    no_magic[33] = b'x';
    assert!(err(&no_magic, 100_000).contains("STARGZ"));
    let mut hex = good;
    hex[20] = b'z';
    assert!(err(&hex, 100_000).contains("16 hex digits"));
    let mut nonempty = good;
    nonempty[48] = 1;
    assert!(err(&nonempty, 100_000).contains("not empty"));
    // The footer is itself a valid, empty gzip member.
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&good[..])
        .read_to_end(&mut out)
        .unwrap();
    assert!(out.is_empty());
}

/// A tar with every kind of entry a layer has.
fn sample_layer(big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>,
               kind: tar::EntryType,
               name: &str,
               mode: u32,
               data: &[u8],
               link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    use tar::EntryType as T;
    add(&mut b, T::Directory, "./", 0o755, b"", None);
    add(&mut b, T::Directory, "etc/", 0o755, b"", None);
    add(&mut b, T::Regular, "etc/hostname", 0o644, b"box\n", None);
    add(&mut b, T::Regular, "etc/empty", 0o600, b"", None);
    add(&mut b, T::Regular, "usr/bin/big", 0o755, big, None);
    add(&mut b, T::Symlink, "bin", 0o777, b"", Some("usr/bin"));
    add(
        &mut b,
        T::Link,
        "usr/bin/big2",
        0o755,
        b"",
        Some("usr/bin/big"),
    );
    add(&mut b, T::Char, "dev/null", 0o666, b"", None);
    add(&mut b, T::Fifo, "run/fifo", 0o600, b"", None);
    add(&mut b, T::Regular, "var/.wh.gone", 0o644, b"", None);
    add(&mut b, T::Regular, "opt/.wh..wh..opq", 0o644, b"", None);
    let long = format!("deep/{}/file", "n".repeat(150));
    add(&mut b, T::Regular, &long, 0o644, b"long name", None);
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hello"[..])])
        .unwrap();
    add(&mut b, T::Regular, "etc/xattr", 0o644, b"x", None);
    b.into_inner().unwrap()
}

fn inflate(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn written_blobs_read_back_through_footer_toc_and_chunks() {
    let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let layer = sample_layer(&big);
    let opts = WriteOptions {
        chunk_size: 4096,
        prefetch: vec!["etc/hostname".into(), "/etc/xattr".into()],
        ..WriteOptions::default()
    };
    let mut blob = Vec::new();
    let written = write_estargz(|| Ok(&layer[..]), &mut blob, &opts).unwrap();
    assert_eq!(written.blob_digest, Digest::of(&blob));
    assert_eq!(written.blob_size, blob.len() as u64);
    // Still a gzip layer: the whole stream is the tar whose digest is diff_id.
    let tar_bytes = inflate(&blob);
    assert_eq!(written.diff_id, Digest::of(&tar_bytes));

    let size = blob.len() as u64;
    let toc_offset = parse_footer(&blob[blob.len() - 51..], size).unwrap();
    let member = &blob[usize::try_from(toc_offset).unwrap()..blob.len() - 51];
    let (idx, digest) = read_toc(
        member,
        toc_offset,
        Some(&written.toc_digest),
        &TocLimits::default(),
    )
    .unwrap();
    assert_eq!(digest, written.toc_digest);
    let wrong = Digest::of(b"other");
    let err = read_toc(member, toc_offset, Some(&wrong), &TocLimits::default()).unwrap_err();
    assert!(matches!(err, FooterError::DigestMismatch { .. }), "{err}");

    // From a tail that holds it all, and from one that does not.
    let tail = &blob[blob.len() - (blob.len() - usize::try_from(toc_offset).unwrap())..];
    match read_toc_from_tail(tail, size, Some(&written.toc_digest), &TocLimits::default()) {
        Ok(TailToc::Read { digest, .. }) => assert_eq!(digest, written.toc_digest),
        other => panic!("{other:?}"),
    }
    match read_toc_from_tail(&tail[1..], size, None, &TocLimits::default()) {
        Ok(TailToc::Fetch {
            toc_offset: at,
            range,
        }) => {
            assert_eq!((at, range), (toc_offset, toc_offset..size - 51))
        }
        other => panic!("{other:?}"),
    }

    // Every regular file, read chunk by chunk from its span alone.
    let expect = |path: &str, data: &[u8]| {
        let e = idx.get(path).unwrap_or_else(|| panic!("{path} missing"));
        let EntryKind::File {
            size,
            chunks,
            digest,
        } = &e.kind
        else {
            panic!("{path} is not a file")
        };
        assert_eq!(*size, data.len() as u64, "{path}");
        assert_eq!(
            digest.as_ref().unwrap_or(&Digest::of(b"")),
            &Digest::of(data),
            "{path}"
        );
        let mut got = Vec::new();
        for c in chunks {
            let start = usize::try_from(c.blob_offset).unwrap();
            let span = &blob[start..start + usize::try_from(c.compressed_len).unwrap()];
            let inflated = inflate(span);
            let inner = usize::try_from(c.inner_offset).unwrap();
            let piece = &inflated[inner..inner + usize::try_from(c.size).unwrap()];
            assert_eq!(
                Digest::of(piece),
                c.digest,
                "{path} chunk at {}",
                c.file_offset
            );
            got.extend_from_slice(piece);
        }
        assert_eq!(got, data, "{path}");
    };
    expect("etc/hostname", b"box\n");
    expect("usr/bin/big", &big);
    expect(&format!("deep/{}/file", "n".repeat(150)), b"long name");
    let EntryKind::File { chunks, .. } = &idx.get("usr/bin/big").unwrap().kind else {
        panic!()
    };
    assert_eq!(chunks.len(), 10);
    assert!(matches!(
        &idx.get("etc/empty").unwrap().kind,
        EntryKind::File { size: 0, .. }
    ));

    let e = |p: &str| idx.get(p).unwrap().clone();
    assert_eq!(
        e("bin").kind,
        EntryKind::Symlink {
            target: "usr/bin".into()
        }
    );
    assert_eq!(
        e("usr/bin/big2").kind,
        EntryKind::Hardlink {
            target: "usr/bin/big".into()
        }
    );
    assert_eq!(e("dev/null").kind, EntryKind::Char { major: 1, minor: 3 });
    assert_eq!(e("run/fifo").kind, EntryKind::Fifo);
    assert_eq!(
        e("var/.wh.gone").kind,
        EntryKind::File {
            size: 0,
            digest: None,
            chunks: vec![]
        }
    );
    assert_eq!(
        idx.get("opt/.wh..wh..opq").unwrap().whiteout(),
        Whiteout::Opaque
    );
    assert_eq!(e("var/.wh.gone").whiteout(), Whiteout::Remove("gone"));
    assert_eq!(e("etc/hostname").whiteout(), Whiteout::None);
    assert_eq!(
        e("etc/xattr").xattrs,
        [("user.note".into(), b"hello".to_vec())]
    );
    let hostname = e("etc/hostname");
    assert_eq!(
        (hostname.mode, hostname.uid, hostname.gid),
        (0o644, 1000, 100)
    );
    assert_eq!(hostname.mtime, Some((1_700_000_000, 0)));
    assert_eq!(e("etc").mode, 0o755);
    assert!(
        !e("").implied,
        "the tar's ./ entry gives the root's metadata"
    );

    // The prioritized files come first, then the landmark.
    let first: Vec<_> = idx
        .prefetch_entries()
        .unwrap()
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(first, ["etc/hostname", "etc/xattr"]);
    let range = idx.prefetch_range().unwrap();
    assert!(range.end > 0 && range.end < toc_offset);

    // The tar inside holds the same entries, cleaned, plus the metadata.
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        names.push(String::from_utf8(entry.path_bytes().into_owned()).unwrap());
    }
    assert_eq!(
        &names[..3],
        ["etc/hostname", "etc/xattr", PREFETCH_LANDMARK]
    );
    assert_eq!(names.last().unwrap(), TOC_NAME);
    assert_eq!(names.len(), 13 + 2);
}

#[test]
fn without_a_prefetch_list_the_no_prefetch_landmark_comes_first() {
    let layer = sample_layer(b"small");
    let mut blob = Vec::new();
    let written = write_estargz(|| Ok(&layer[..]), &mut blob, &WriteOptions::default()).unwrap();
    let toc_offset = parse_footer(&blob, blob.len() as u64).unwrap();
    let member = &blob[usize::try_from(toc_offset).unwrap()..blob.len() - 51];
    let (idx, _) = read_toc(member, toc_offset, None, &TocLimits::default()).unwrap();
    assert!(idx.prefetch_entries().is_none());
    assert!(idx.get(NO_PREFETCH_LANDMARK).is_some());
    // Converting the result again drops the old metadata and keeps the tree.
    let tar_bytes = inflate(&blob);
    let mut again = Vec::new();
    let twice = write_estargz(|| Ok(&tar_bytes[..]), &mut again, &WriteOptions::default()).unwrap();
    assert_eq!(twice.toc_digest, written.toc_digest);
    assert_eq!(twice.diff_id, written.diff_id);
    assert!(u64::try_from(blob.len()).unwrap() > FOOTER_SIZE);
}

#[test]
fn the_writer_refuses_what_a_toc_cannot_hold() {
    let mut b = tar::Builder::new(Vec::new());
    for _ in 0..2 {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "twice", &b"x"[..]).unwrap();
    }
    let layer = b.into_inner().unwrap();
    let err = write_estargz(|| Ok(&layer[..]), Vec::new(), &WriteOptions::default()).unwrap_err();
    assert!(err.to_string().contains("names \"twice\" twice"), "{err}");

    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.as_old_mut().name[..7].copy_from_slice(b"../evil");
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend_from_slice(&[b'x'; 512]);
    layer.extend_from_slice(&[0; 1024]);
    let err = write_estargz(|| Ok(&layer[..]), Vec::new(), &WriteOptions::default()).unwrap_err();
    assert!(err.to_string().contains("escapes the layer root"), "{err}");
}

#[test]
fn estargz_layers_are_those_whose_descriptor_has_the_toc_digest() {
    let manifest = json!({"layers": [
        {"digest": D, "annotations": {TOC_DIGEST_ANNOTATION: D}},
        {"digest": D},
        {"digest": D, "annotations": {"other": "x"}},
    ]});
    assert_eq!(
        super::estargz_layers(manifest.to_string().as_bytes()),
        [true, false, false]
    );
    assert!(super::estargz_layers(b"not json").is_empty());
}
