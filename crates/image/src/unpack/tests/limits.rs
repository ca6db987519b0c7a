//! Per-layer bounds (header count, extension bytes, names, xattrs, deferred
//! directory metadata), each refused with one line naming the bound.

use super::*;
use crate::unpack::UnpackLimits;

fn unpack_with(sb: &Sandbox, tar: &[u8], limits: UnpackLimits) -> Result<UnpackStats, UnpackError> {
    let mut o = opts();
    o.limits = limits;
    unpack_layer(tar, &sb.dest, &o)
}

fn limit_line(err: &UnpackError) -> String {
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains(IMAGE) && line.contains("sha256:test-layer"),
        "{line}"
    );
    line
}

#[test]
fn the_header_count_is_bounded() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    for _ in 0..20 {
        l.dir("./");
    }
    let limits = UnpackLimits {
        headers: 10,
        ..Default::default()
    };
    let err = unpack_with(&sb, &l.bytes(), limits).unwrap_err();
    let line = limit_line(&err);
    assert!(line.contains("bound of 10 tar headers"), "{line}");
    sb.assert_contained();
}

#[test]
fn a_directory_named_again_is_deferred_once() {
    if !require_root("a_directory_named_again_is_deferred_once") {
        return;
    }
    // A million `./` would once keep a million copies of the root's
    // metadata; with a small deferred budget, repeats must not count.
    let sb = Sandbox::new();
    let mut l = Layer::new();
    for _ in 0..5000 {
        l.dir("./");
    }
    l.dir("d");
    let limits = UnpackLimits {
        deferred_dir_bytes: 1000,
        ..Default::default()
    };
    unpack_with(&sb, &l.bytes(), limits).unwrap();

    let sb = Sandbox::new();
    let mut l = Layer::new();
    for i in 0..20 {
        l.dir(&format!("dir{i}"));
    }
    let limits = UnpackLimits {
        deferred_dir_bytes: 1000,
        ..Default::default()
    };
    let err = unpack_with(&sb, &l.bytes(), limits).unwrap_err();
    let line = limit_line(&err);
    assert!(
        line.contains("directory metadata") && line.contains("1000 bytes"),
        "{line}"
    );
}

#[test]
fn extension_bytes_are_bounded_per_member_and_per_layer() {
    let sb = Sandbox::new();
    // A PAX header and a GNU long name, each under the bound, together over.
    let mut l = Layer::new();
    l.pax(&[("comment", &[b'c'; 700])]);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(700);
    h.set_cksum();
    l.builder().append(&h, &[b'n'; 700][..]).unwrap();
    l.file("x", b"");
    let limits = UnpackLimits {
        ext_bytes_per_member: 1024,
        ..Default::default()
    };
    let err = unpack_with(&sb, &l.bytes(), limits).unwrap_err();
    let line = limit_line(&err);
    assert!(line.contains("over the bound of 1024 per member"), "{line}");

    let sb = Sandbox::new();
    let mut l = Layer::new();
    for i in 0..10 {
        l.pax(&[("comment", &[b'c'; 200])])
            .file(&format!("f{i}"), b"");
    }
    let limits = UnpackLimits {
        ext_bytes_per_layer: 1024,
        ..Default::default()
    };
    let err = unpack_with(&sb, &l.bytes(), limits).unwrap_err();
    let line = limit_line(&err);
    assert!(line.contains("1024 bytes per layer"), "{line}");
}

#[test]
fn names_and_xattrs_past_the_kernels_bounds_are_refused() {
    let huge_name = vec![b'n'; 1_000_000];
    let xattr_key = format!("SCHILY.xattr.trusted.overlay.{}", "n".repeat(300));
    let long_path = "a/".repeat(2100);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut l = Layer::new();
                l.pax(&[(xattr_key.as_str(), b"y")]).dir("d");
                l.bytes()
            },
            "XATTR_NAME_MAX",
        ),
        (
            {
                let mut l = Layer::new();
                l.pax(&[("SCHILY.xattr.user.big", &vec![b'v'; 70 << 10])])
                    .file("f", b"");
                l.bytes()
            },
            "XATTR_SIZE_MAX",
        ),
        (
            {
                let mut l = Layer::new();
                l.pax(&[("path", long_path.as_bytes())]).file("f", b"");
                l.bytes()
            },
            "PATH_MAX",
        ),
        (
            {
                let mut l = Layer::new();
                l.pax(&[("path", &huge_name[..300])]).file("f", b"");
                l.bytes()
            },
            "NAME_MAX",
        ),
        (
            {
                let mut l = Layer::new();
                l.pax(&[("linkpath", long_path.as_bytes())])
                    .symlink("s", "t");
                l.bytes()
            },
            "link target",
        ),
    ];
    for (tar, want) in cases {
        let sb = Sandbox::new();
        let err = unpack_with(&sb, &tar, UnpackLimits::default()).unwrap_err();
        let line = limit_line(&err);
        assert!(line.contains(want), "{want}: {line}");
        assert!(line.len() < 1024, "the line stays short: {line}");
        sb.assert_contained();
    }
}
