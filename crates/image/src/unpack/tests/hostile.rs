//! Hostile layers: each is refused with its own error variant and leaves
//! everything outside `dest` untouched.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::EntryType;

use super::*;

fn refused(sb: &Sandbox, l: &mut Layer) -> UnpackError {
    let err = sb
        .unpack(&l.bytes())
        .expect_err("hostile layer was accepted");
    sb.assert_contained();
    assert!(err.to_string().contains(IMAGE), "{err}");
    err
}

#[test]
fn dotdot_names_that_leave_the_root_are_refused() {
    for name in ["../x", "a/../../x", "/../x", "../sentinel"] {
        let sb = Sandbox::new();
        let err = refused(&sb, Layer::new().file(name, b"pwned"));
        assert!(
            matches!(&err, UnpackError::Escapes { entry, .. } if entry == name),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("layer entry {name:?} of image \"reg/x:1\" escapes the layer root")
        );
        assert!(names(&sb.dest).is_empty());
    }
}

#[test]
fn dotdot_that_stays_inside_is_cleaned() {
    let sb = Sandbox::new();
    sb.unpack(&Layer::new().file("a/../b", b"ok").bytes())
        .unwrap();
    assert_eq!(fs::read(sb.path("b")).unwrap(), b"ok");
    sb.assert_contained();
}

#[test]
fn absolute_names_land_inside() {
    let sb = Sandbox::new();
    sb.unpack(&Layer::new().file("/abs/x", b"inside").bytes())
        .unwrap();
    assert_eq!(fs::read(sb.path("abs/x")).unwrap(), b"inside");
    sb.assert_contained();
}

#[test]
fn parents_through_escaping_symlinks_are_refused() {
    let probe = "cvmd-unpack-escape-probe";
    type Case = (&'static str, Vec<(&'static str, &'static str)>, String);
    let cases: Vec<Case> = vec![
        ("root", vec![("l", "/")], format!("l/etc/{probe}")),
        ("up2", vec![("l", "../..")], format!("l/{probe}")),
        (
            "chain",
            vec![("a", "b"), ("b", "../..")],
            format!("a/{probe}"),
        ),
        ("nested", vec![("d/l", "../../..")], format!("d/l/{probe}")),
        ("whiteout", vec![("l", "..")], "l/.wh.sentinel".to_string()),
        ("opaque", vec![("l", "..")], "l/.wh..wh..opq".to_string()),
    ];
    for (case, links, name) in cases {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        for (link, target) in links {
            l.symlink(link, target);
        }
        l.file(&name, b"pwned");
        let err = refused(&sb, &mut l);
        assert!(
            matches!(err, UnpackError::ParentOutside { .. }),
            "{case}: {err}"
        );
        assert!(!Path::new("/etc").join(probe).exists());
        assert!(!sb.tmp.join(probe).exists());
    }
}

#[test]
fn symlink_loops_and_file_parents_are_refused() {
    let sb = Sandbox::new();
    let err = refused(
        &sb,
        Layer::new()
            .symlink("a", "b")
            .symlink("b", "a")
            .file("a/x", b""),
    );
    assert!(matches!(err, UnpackError::ParentLoop { .. }), "{err}");

    let sb = Sandbox::new();
    let err = refused(&sb, Layer::new().file("f", b"").file("f/x", b""));
    assert!(
        matches!(err, UnpackError::ParentNotDirectory { .. }),
        "{err}"
    );

    let sb = Sandbox::new();
    let err = refused(&sb, Layer::new().symlink("l", "missing").file("l/x", b""));
    assert!(
        matches!(err, UnpackError::ParentNotDirectory { .. }),
        "{err}"
    );
}

#[test]
fn final_symlinks_are_replaced_not_followed() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.symlink("f", "../sentinel")
        .file("f", b"pwned")
        .symlink("d", "../..")
        .entry("d/", EntryType::Directory, "", b"", |h| h.set_mode(0o777))
        .symlink("h", "../sentinel")
        .hardlink("h2", "h");
    sb.unpack(&l.bytes()).unwrap();
    assert_eq!(fs::read(sb.path("f")).unwrap(), b"pwned");
    assert!(sb.path("d").is_dir());
    // The hardlink is to the symlink itself, not to what it points at.
    assert!(fs::symlink_metadata(sb.path("h2"))
        .unwrap()
        .file_type()
        .is_symlink());
    sb.assert_contained();
}

#[test]
fn deferred_dir_metadata_never_follows_a_later_symlink() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.entry("d/", EntryType::Directory, "", b"", |h| {
        h.set_mode(0o777);
        h.set_mtime(1);
    })
    .symlink("d", "..");
    sb.unpack(&l.bytes()).unwrap();
    sb.assert_contained();
}

#[test]
fn hardlinks_outside_or_absent_are_refused() {
    for target in ["../sentinel", "../../outer/sentinel", "a/../../sentinel"] {
        let sb = Sandbox::new();
        let err = refused(&sb, Layer::new().hardlink("h", target));
        assert!(
            matches!(err, UnpackError::HardlinkEscapes { .. }),
            "{target}: {err}"
        );
    }
    // Absolute targets name this layer's own member (leading `/` stripped);
    // the host's /etc/passwd is never linked (its nlink is watched).
    let sb = Sandbox::new();
    let err = refused(&sb, Layer::new().hardlink("h", "/etc/passwd"));
    assert!(
        matches!(err, UnpackError::HardlinkTargetMissing { .. }),
        "{err}"
    );
    let sb = Sandbox::new();
    sb.unpack(
        &Layer::new()
            .file("etc/passwd", b"layer's")
            .hardlink("h", "/etc/passwd")
            .bytes(),
    )
    .unwrap();
    assert_eq!(fs::read(sb.path("h")).unwrap(), b"layer's");
    sb.assert_contained();
    // A target whose parent is an escaping symlink.
    let sb = Sandbox::new();
    let err = refused(
        &sb,
        Layer::new().symlink("l", "..").hardlink("h", "l/sentinel"),
    );
    assert!(matches!(err, UnpackError::HardlinkEscapes { .. }), "{err}");
    // Missing, or a directory.
    let sb = Sandbox::new();
    let err = refused(&sb, Layer::new().dir("d/").hardlink("h", "d"));
    assert!(
        matches!(err, UnpackError::HardlinkTargetMissing { .. }),
        "{err}"
    );
}

#[test]
fn malformed_whiteouts_are_refused() {
    for name in [".wh.../x", "a/.wh..", "a/.wh...", "a/.wh."] {
        let sb = Sandbox::new();
        let err = refused(&sb, Layer::new().file(name, b""));
        assert!(
            matches!(err, UnpackError::BadWhiteout { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn odd_types_and_root_names_are_refused() {
    let sb = Sandbox::new();
    let err = refused(
        &sb,
        Layer::new().entry("v", EntryType::new(b'V'), "", b"", |_| {}),
    );
    assert!(
        matches!(err, UnpackError::UnsupportedType { kind: 'V', .. }),
        "{err}"
    );
    let sb = Sandbox::new();
    let err = refused(&sb, Layer::new().file("./", b"x"));
    assert!(matches!(err, UnpackError::RootNotDirectory { .. }), "{err}");
    let sb = Sandbox::new();
    let err = refused(&sb, Layer::new().symlink("/", "x"));
    assert!(matches!(err, UnpackError::RootNotDirectory { .. }), "{err}");
}

#[test]
fn oversized_extension_headers_are_refused() {
    let sb = Sandbox::new();
    let huge = vec![b'a'; 9 << 20];
    let err = refused(&sb, Layer::new().pax(&[("path", &huge)]).file("x", b""));
    assert!(matches!(err, UnpackError::HeaderTooLarge { .. }), "{err}");
}

/// Yields `n` zero bytes without holding them.
fn zeros(n: u64) -> impl Read {
    io::repeat(0).take(n)
}

#[test]
fn gzip_bomb_is_stopped_at_the_byte_bound() {
    const BIG: u64 = 100 << 20;
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_size(BIG);
    h.set_mode(0o644);
    b.append_data(&mut h, "bomb", zeros(BIG)).unwrap();
    let gz = b.into_inner().unwrap().finish().unwrap();
    assert!(gz.len() < 1 << 20, "compressed bomb is {} bytes", gz.len());

    let sb = Sandbox::new();
    let mut o = opts();
    o.max_unpacked_bytes = 10 << 20;
    let err = unpack_layer(GzDecoder::new(&gz[..]), &sb.dest, &o).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit, .. } if limit == 10 << 20),
        "{err}"
    );
    sb.assert_contained();
    let written = fs::metadata(sb.path("bomb")).map(|m| m.len()).unwrap_or(0);
    assert!(written <= 10 << 20);
}

#[test]
fn byte_bound_counts_across_files() {
    let sb = Sandbox::new();
    let chunk = vec![1u8; 4096];
    let mut l = Layer::new();
    l.file("a", &chunk).file("b", &chunk).file("c", &chunk);
    let mut o = opts();
    o.max_unpacked_bytes = 10_000;
    let err = unpack_layer(&l.bytes()[..], &sb.dest, &o).unwrap_err();
    assert!(
        matches!(&err, UnpackError::TooLarge { entry, .. } if entry == "c"),
        "{err}"
    );
    sb.assert_contained();
}

#[test]
fn trailing_garbage_is_bounded() {
    let sb = Sandbox::new();
    let mut tar = Layer::new().file("a", b"x").bytes();
    tar.extend_from_slice(&[0u8; 20_000]);
    let mut o = opts();
    o.max_unpacked_bytes = 10_000;
    let err = unpack_layer(&tar[..], &sb.dest, &o).unwrap_err();
    assert!(matches!(err, UnpackError::TrailingData { .. }), "{err}");
    sb.assert_contained();
}
