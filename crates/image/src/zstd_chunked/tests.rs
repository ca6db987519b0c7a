//! zstd:chunked TOCs and footers, good and hostile, refused with their
//! message; the writer's blobs read back whole and chunk by chunk.

use std::io::Read;

use serde_json::json;

use super::footer::*;
use super::raw::*;
use super::writer::write_zstd_chunked;
use crate::estargz::{EntryKind, TocLimits, WriteOptions};
use cvmd_digest::Digest;

/// The data before the TOC in the hand-made TOCs below.
const DATA_END: u64 = 10_000;

fn digest_of(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// `entries` as a compressed TOC placed after `DATA_END` bytes of data:
/// its bytes, position and checksum.
fn toc(entries: serde_json::Value) -> (Vec<u8>, TocPosition, Digest) {
    let json = json!({"version": 1, "entries": entries}).to_string();
    let compressed = zstd::bulk::compress(json.as_bytes(), 3).unwrap();
    let position = TocPosition {
        offset: DATA_END + 8,
        compressed_len: compressed.len() as u64,
        uncompressed_len: json.len() as u64,
    };
    let checksum = Digest::of(&compressed);
    (compressed, position, checksum)
}

fn read(entries: serde_json::Value) -> Result<crate::estargz::TocIndex, ZstdChunkedError> {
    let (bytes, position, checksum) = toc(entries);
    read_toc(&bytes, &position, &checksum, &TocLimits::default())
}

fn refused(entries: serde_json::Value, wanted: &str) {
    let msg = read(entries).expect_err("hostile TOC accepted").to_string();
    assert!(msg.contains(wanted), "{msg:?} lacks {wanted:?}");
    assert!(!msg.contains('\n'), "{msg:?} is not one line");
}

/// A file as containers/storage writes one of one chunk: `digest` only.
fn reg(name: &str, size: u64, offset: u64, end: u64) -> serde_json::Value {
    json!({"name": name, "type": "reg", "size": size, "offset": offset, "endOffset": end,
           "mode": 0o644, "digest": digest_of(b"x")})
}

#[test]
fn a_toc_as_containers_storage_writes_it_is_indexed_with_frame_spans() {
    let idx = read(json!([
        {"name": "usr/", "type": "dir", "mode": 0o755, "modtime": "2024-05-01T10:00:00.5+02:00"},
        reg("usr/one", 5, 100, 150),
        {"name": "usr/big", "type": "reg", "size": 25, "offset": 200, "endOffset": 420,
         "chunkSize": 10, "chunkDigest": digest_of(b"a"), "mode": 0o600, "digest": digest_of(b"all")},
        {"name": "usr/big", "type": "chunk", "offset": 300, "chunkOffset": 10, "chunkSize": 10,
         "chunkDigest": digest_of(b"b"), "chunkType": "zeros"},
        {"name": "usr/big", "type": "chunk", "offset": 350, "chunkOffset": 20, "chunkSize": 5,
         "chunkDigest": digest_of(b"c")},
        {"name": "usr/empty", "type": "reg", "mode": 0o644},
        {"name": ".prefetch.landmark", "type": "reg", "size": 1, "offset": 500, "endOffset": 510,
         "digest": digest_of(b"\x0f")},
        {"name": "usr/x", "type": "symlink", "linkName": "one"},
    ]))
    .unwrap();
    let spans = |path: &str| -> Vec<(u64, u64, u64, u64, u64)> {
        let EntryKind::File { chunks, .. } = &idx.get(path).unwrap().kind else {
            panic!("{path} is not a file")
        };
        chunks
            .iter()
            .map(|c| {
                (
                    c.blob_offset,
                    c.compressed_len,
                    c.inner_offset,
                    c.file_offset,
                    c.size,
                )
            })
            .collect()
    };
    assert_eq!(spans("usr/one"), [(100, 50, 0, 0, 5)]);
    assert_eq!(
        spans("usr/big"),
        [
            (200, 100, 0, 0, 10),
            (300, 50, 0, 10, 10),
            (350, 70, 0, 20, 5)
        ]
    );
    assert!(spans("usr/empty").is_empty());
    // Not a landmark in this format: a file like any other.
    assert!(idx.prefetch_entries().is_none());
    assert_eq!(spans(".prefetch.landmark"), [(500, 10, 0, 0, 1)]);
    assert_eq!(
        idx.get("usr").unwrap().mtime,
        Some((1_714_550_400, 500_000_000))
    );
    assert_eq!(idx.toc_offset(), DATA_END);
}

#[test]
fn hostile_tocs_are_refused_by_name() {
    refused(json!([reg("../etc/passwd", 5, 100, 150)]), "'..' component");
    refused(json!([reg("/etc/passwd", 5, 100, 150)]), "it is absolute");
    // A frame reaching into the TOC, or ending before it starts.
    refused(
        json!([reg("a", 5, 100, DATA_END + 1)]),
        "not a non-empty range before the TOC",
    );
    refused(
        json!([reg("a", 5, 100, 100)]),
        "not a non-empty range before the TOC",
    );
    refused(
        json!([reg("a", 5, DATA_END, DATA_END + 5)]),
        "outside the data before the TOC",
    );
    // Two files claiming one frame's bytes.
    refused(
        json!([reg("a", 5, 100, 200), reg("b", 5, 150, 250)]),
        "claim overlapping compressed bytes",
    );
    // A file's chunks out of blob order.
    refused(
        json!([
            {"name": "a", "type": "reg", "size": 8, "offset": 300, "endOffset": 400, "chunkSize": 4, "chunkDigest": digest_of(b"1")},
            {"name": "a", "type": "chunk", "offset": 200, "chunkOffset": 4, "chunkSize": 4, "chunkDigest": digest_of(b"2")},
        ]),
        "not a non-empty range before the TOC",
    );
    refused(
        json!([{"name": "a", "type": "reg", "size": 5, "offset": 100, "endOffset": 150}]),
        "lacks chunkDigest",
    );
    refused(
        json!([{"name": "a", "type": "reg", "size": 5, "offset": 100, "endOffset": 150,
                "chunkDigest": digest_of(b"1"), "chunkType": "sparse"}]),
        "has chunkType \"sparse\"",
    );
    refused(
        json!([{"name": "a", "type": "reg", "size": 32 << 20, "offset": 100, "endOffset": 150, "digest": digest_of(b"1")}]),
        "over the bound of",
    );
}

#[test]
fn a_toc_that_is_not_the_promised_one_or_too_big_is_refused_before_inflating() {
    let (bytes, position, checksum) = toc(json!([reg("a", 5, 100, 150)]));
    let limits = TocLimits::default();
    let other = Digest::of(b"another TOC");
    let err = read_toc(&bytes, &position, &other, &limits).unwrap_err();
    assert!(
        matches!(err, ZstdChunkedError::DigestMismatch { .. }),
        "{err}"
    );
    // Declared over the limit: refused without inflating.
    let small = TocLimits {
        max_toc_bytes: 16,
        ..limits
    };
    let err = read_toc(&bytes, &position, &checksum, &small).unwrap_err();
    assert!(
        err.to_string().contains("over the 16 bytes cvmd accepts"),
        "{err}"
    );
    // Declared smaller than it inflates to (a bomb's trick): refused.
    let lying = TocPosition {
        uncompressed_len: 10,
        ..position
    };
    let err = read_toc(&bytes, &lying, &checksum, &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not decompress to its declared 10 bytes"),
        "{err}"
    );
    let err = read_toc(&bytes[1..], &position, &checksum, &limits).unwrap_err();
    assert!(matches!(err, ZstdChunkedError::Length { .. }), "{err}");
}

#[test]
fn annotations_and_footers_give_the_position_or_say_what_is_wrong() {
    use std::collections::HashMap;
    let pos = TocPosition {
        offset: 1000,
        compressed_len: 200,
        uncompressed_len: 900,
    };
    let mut a = HashMap::from([
        (CHECKSUM_ANNOTATION.to_string(), digest_of(b"t")),
        (POSITION_ANNOTATION.to_string(), pos.to_string()),
    ]);
    assert_eq!(
        annotated(Some(&a)).unwrap(),
        Some(Annotated {
            checksum: Digest::of(b"t"),
            position: Some(pos)
        })
    );
    a.insert(POSITION_ANNOTATION.to_string(), "1000:200:900:2".into());
    assert!(annotated(Some(&a))
        .unwrap_err()
        .to_string()
        .contains("is malformed"));
    assert_eq!(annotated(Some(&HashMap::new())).unwrap(), None);

    let limits = TocLimits::default();
    let mut blob = vec![0u8; 1300];
    blob.extend(footer_frame(&pos));
    let size = blob.len() as u64;
    assert_eq!(parse_footer(&blob, size, &limits).unwrap(), pos);
    // The 40-byte footer of releases before tar-split.
    let mut legacy = vec![0u8; 1300];
    let mut data = footer_frame(&pos)[8..40].to_vec();
    data.extend_from_slice(&FOOTER_MAGIC);
    legacy.extend(skippable_frame(&data));
    assert_eq!(
        parse_footer(&legacy, legacy.len() as u64, &limits).unwrap(),
        pos
    );
    // Truncated, not a footer, or pointing outside the blob.
    let err = parse_footer(&blob[blob.len() - 20..], 20, &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("too short for a zstd:chunked footer"),
        "{err}"
    );
    let err = parse_footer(&blob[..blob.len() - 1], size - 1, &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not end in a zstd:chunked footer"),
        "{err}"
    );
    let far = TocPosition {
        offset: size,
        ..pos
    };
    let mut out = vec![0u8; 100];
    out.extend(footer_frame(&far));
    let err = parse_footer(&out, out.len() as u64, &limits).unwrap_err();
    assert!(err.to_string().contains("lies outside the blob"), "{err}");
}

/// A layer tar: a dir, a big file, an empty one, a small one, links.
fn layer_tar(big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, b"", None);
    add("etc/big", tar::EntryType::Regular, big, None);
    add("etc/empty", tar::EntryType::Regular, b"", None);
    add("etc/small", tar::EntryType::Regular, b"hello", None);
    add("etc/link", tar::EntryType::Symlink, b"", Some("small"));
    add("etc/hard", tar::EntryType::Link, b"", Some("etc/small"));
    b.into_inner().unwrap()
}

#[test]
fn the_writer_s_blob_decompresses_to_its_tar_and_each_chunk_reads_alone() {
    let big: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tar = layer_tar(&big);
    let mut blob = Vec::new();
    let opts = WriteOptions {
        chunk_size: 16 << 10,
        ..WriteOptions::default()
    };
    let written = write_zstd_chunked(|| Ok(&tar[..]), &mut blob, &opts).unwrap();
    assert_eq!(written.blob_size, blob.len() as u64);
    assert_eq!(written.blob_digest, Digest::of(&blob));

    // Whole: a zstd decoder skips the TOC and footer frames.
    let mut whole = Vec::new();
    zstd::stream::read::Decoder::new(&blob[..])
        .unwrap()
        .read_to_end(&mut whole)
        .unwrap();
    assert_eq!(Digest::of(&whole), written.diff_id);
    assert_eq!(whole.len() as u64, written.tar_size);
    let names: Vec<String> = tar::Archive::new(&whole[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/big",
            "etc/empty",
            "etc/small",
            "etc/link",
            "etc/hard"
        ]
    );

    // By the footer and by the annotations, the same TOC.
    let limits = TocLimits::default();
    let position = parse_footer(&blob, blob.len() as u64, &limits).unwrap();
    assert_eq!(Some(position), written.toc_position);
    let annotations: std::collections::HashMap<String, String> = written
        .annotations()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let promised = annotated(Some(&annotations)).unwrap().unwrap();
    assert_eq!(promised.position, Some(position));
    let at = usize::try_from(position.offset).unwrap();
    let len = usize::try_from(position.compressed_len).unwrap();
    let idx = read_toc(&blob[at..at + len], &position, &promised.checksum, &limits).unwrap();

    // Each chunk: its frame alone decompresses to its bytes.
    let mut files = 0;
    for (path, want) in [
        ("etc/big", &big[..]),
        ("etc/small", b"hello"),
        ("etc/empty", b""),
    ] {
        let EntryKind::File { size, chunks, .. } = &idx.get(path).unwrap().kind else {
            panic!("{path}")
        };
        assert_eq!(*size, want.len() as u64);
        let mut got = Vec::new();
        for c in chunks {
            let from = usize::try_from(c.blob_offset).unwrap();
            let to = from + usize::try_from(c.compressed_len).unwrap();
            let mut data = Vec::new();
            zstd::stream::read::Decoder::new(&blob[from..to])
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            assert_eq!(
                data.len() as u64,
                c.size,
                "{path}: a frame holds its chunk alone"
            );
            assert_eq!(Digest::of(&data), c.digest);
            got.extend(data);
        }
        assert_eq!(got, want, "{path}");
        files += 1;
    }
    assert_eq!(files, 3);
    let EntryKind::File { chunks, .. } = &idx.get("etc/big").unwrap().kind else {
        panic!()
    };
    assert_eq!(chunks.len(), 4);
    assert!(matches!(
        idx.get("etc/hard").unwrap().kind,
        EntryKind::Hardlink { .. }
    ));
}
