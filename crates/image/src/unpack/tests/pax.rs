//! PAX records parsed by length, not split at newlines: binary xattrs and
//! GNU tar's text ACLs land; GNU sparse and Go's >8 GiB layout still read;
//! malformed extension headers are refused.

use std::fs;
use std::os::unix::fs::MetadataExt;

use tar::{EntryType, Header};

use super::*;

/// A v2 file capability (linux/capability.h `struct vfs_cap_data`) with
/// cap_dac_override and cap_fowner permitted: the permitted word's low byte
/// is 0x0a, a newline.
const CAP_WITH_NEWLINE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// `system.posix_acl_access` as Docker writes it (binary, version 2,
/// linux/posix_acl_xattr.h): user::rw-, group::r--, group:10:r-- (id 0x0a),
/// mask::r--, other::r--.
fn acl_xattr() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x04, 4, u32::MAX),
        (0x08, 4, 10),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// What `tar --acls --format=posix` writes (GNU tar `xattrs.c`,
/// acl_to_text): one line per entry.
const GNU_TEXT_ACL: &[u8] = b"user::rwx\ngroup::r-x\ngroup:adm:r-x\nmask::r-x\nother::r-x\n";

#[test]
fn xattr_values_with_newlines_land_whole() {
    if !require_root("xattr_values_with_newlines_land_whole") {
        return;
    }
    let sb = Sandbox::new();
    let acl = acl_xattr();
    assert!(acl.contains(&b'\n'));
    let mut l = Layer::new();
    l.pax(&[
        ("SCHILY.xattr.security.capability", &CAP_WITH_NEWLINE),
        ("SCHILY.xattr.user.lines", b"one\ntwo\n"),
        ("SCHILY.xattr.system.posix_acl_access", &acl),
        // GNU tar's text ACLs are not xattrs; accepted and, as before, not
        // applied (Docker's layers carry ACLs as the binary xattr above).
        ("SCHILY.acl.access", GNU_TEXT_ACL),
        ("uid", b"3000000"),
        ("mtime", b"1500000000.5"),
    ])
    .file("usr/bin/ping", b"elf");
    l.pax(&[("SCHILY.acl.default", GNU_TEXT_ACL)])
        .dir("shared/");
    sb.unpack(&l.bytes()).unwrap();

    let ping = sb.path("usr/bin/ping");
    assert_eq!(
        xattr(&ping, "security.capability").as_deref(),
        Some(&CAP_WITH_NEWLINE[..])
    );
    assert_eq!(
        xattr(&ping, "user.lines").as_deref(),
        Some(&b"one\ntwo\n"[..])
    );
    assert_eq!(
        xattr(&ping, "system.posix_acl_access").as_deref(),
        Some(&acl[..])
    );
    let meta = fs::metadata(&ping).unwrap();
    // Records after the newline-holding ones are read too.
    assert_eq!((meta.uid(), meta.mtime()), (3_000_000, 1_500_000_000));
    assert_eq!(meta.mtime_nsec(), 500_000_000);
    assert!(sb.path("shared").is_dir());
    sb.assert_contained();
}

#[test]
fn a_value_cannot_smuggle_in_a_path_record() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    // Split at newlines, "9 path=a" would be a valid record renaming the file.
    l.pax(&[("SCHILY.xattr.user.x", b"\n9 path=a\n")])
        .file("real", b"data");
    sb.unpack(&l.bytes()).unwrap();
    assert_eq!(names(&sb.dest), ["real"]);
    if rustix::process::geteuid().is_root() {
        assert_eq!(
            xattr(&sb.path("real"), "user.x").as_deref(),
            Some(&b"\n9 path=a\n"[..])
        );
    }
    sb.assert_contained();
}

#[test]
fn pax_size_with_a_zero_header_size_is_read_as_go_writes_it() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    // Go's archive/tar, for files over 8 GiB: header size 0, PAX size real.
    // The data is written raw, as the builder knows nothing of PAX sizes.
    l.pax(&[("size", b"600")]);
    let mut h = Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    let mut body = h.as_bytes().to_vec();
    body.extend(vec![b'b'; 600]);
    body.resize(512 + 1024, 0);
    l.builder().get_mut().extend(body);
    l.file("after", b"in step");
    sb.unpack(&l.bytes()).unwrap();
    assert_eq!(fs::read(sb.path("big")).unwrap(), vec![b'b'; 600]);
    assert_eq!(fs::read(sb.path("after")).unwrap(), b"in step");
    sb.assert_contained();
}

#[test]
fn a_truncated_member_after_a_pax_size_is_an_error() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.pax(&[("size", b"600")]);
    let mut h = Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_size(0);
    h.set_cksum();
    let mut tar = l.bytes();
    // Drop the end-of-archive blocks, then end the stream inside the data.
    tar.truncate(tar.len() - 1024);
    tar.extend(h.as_bytes());
    tar.extend([b'b'; 100]);
    let err = sb.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
    sb.assert_contained();
}

/// Octal tar number field, NUL-terminated.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

#[test]
fn gnu_sparse_files_are_expanded_with_extension_blocks() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    let mut h = Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512 + 512 + 3);
    let regions = [(0u64, 512u64), (4096, 512), (8192, 3), (16384, 0)];
    let gnu = h.as_gnu_mut().unwrap();
    for (slot, (off, len)) in gnu.sparse.iter_mut().zip(&regions[..3]) {
        octal(&mut slot.offset, *off);
        octal(&mut slot.numbytes, *len);
    }
    gnu.isextended[0] = 1;
    octal(&mut gnu.realsize, 16384);
    h.set_cksum();
    let mut ext = tar::GnuExtSparseHeader::new();
    octal(&mut ext.sparse_mut()[0].offset, regions[3].0);
    octal(&mut ext.sparse_mut()[0].numbytes, regions[3].1);
    let mut stored = ext.as_mut_bytes().to_vec();
    stored.extend(vec![b'a'; 512]);
    stored.extend(vec![b'b'; 512]);
    stored.extend(b"xyz");
    l.builder().append(&h, &stored[..]).unwrap();
    l.file("after", b"in step");
    sb.unpack(&l.bytes()).unwrap();

    let data = fs::read(sb.path("sparse")).unwrap();
    let mut want = vec![0u8; 16384];
    want[..512].fill(b'a');
    want[4096..4608].fill(b'b');
    want[8192..8195].copy_from_slice(b"xyz");
    assert_eq!(data, want);
    assert_eq!(fs::read(sb.path("after")).unwrap(), b"in step");
    sb.assert_contained();
}

fn refused_extension(l: &mut Layer) -> String {
    let sb = Sandbox::new();
    let err = sb.unpack(&l.bytes()).expect_err("malformed layer accepted");
    sb.assert_contained();
    assert!(
        matches!(
            err,
            UnpackError::Extension { .. } | UnpackError::Sparse { .. }
        ),
        "{err}"
    );
    err.to_string()
}

#[test]
fn malformed_extension_headers_are_refused_clearly() {
    let mut overrun = Layer::new();
    overrun.entry(
        "PaxHeaders/x",
        EntryType::XHeader,
        "",
        b"99 path=a\n",
        |_| {},
    );
    overrun.file("f", b"");
    assert_eq!(
        refused_extension(&mut overrun),
        "layer of image \"reg/x:1\" has a malformed extension header (PAX record or GNU long \
         name) after entry \"\": PAX record at byte 0 claims length 99 but only 10 bytes of \
         header data are left; the layer is corrupt or hostile"
    );

    let mut missing_eq = Layer::new();
    missing_eq.file("first", b"");
    missing_eq.entry("PaxHeaders/x", EntryType::XHeader, "", b"6 kv\n\n", |_| {});
    missing_eq.file("f", b"");
    let err = refused_extension(&mut missing_eq);
    assert!(err.contains("after entry \"first\""), "{err}");
    assert!(err.contains("no `=`"), "{err}");

    let mut mismatch = Layer::new();
    mismatch.pax(&[("size", b"5")]).file("f", &[b'x'; 600]);
    assert!(refused_extension(&mut mismatch).contains("PAX size record 5 differs"));

    let mut twice = Layer::new();
    twice
        .pax(&[("path", b"a")])
        .pax(&[("path", b"b")])
        .file("f", b"");
    assert!(refused_extension(&mut twice).contains("two PAX headers"));

    let mut dangling = Layer::new();
    dangling.file("f", b"").pax(&[("path", b"a")]);
    assert!(refused_extension(&mut dangling).contains("describe no member"));

    let mut bad_uid = Layer::new();
    bad_uid.pax(&[("uid", b"root")]).file("f", b"");
    let sb = Sandbox::new();
    let err = sb.unpack(&bad_uid.bytes()).unwrap_err();
    assert!(err.to_string().contains("PAX uid \"root\""), "{err}");
    sb.assert_contained();
}

#[test]
fn sparse_maps_that_do_not_add_up_are_refused() {
    let mut l = Layer::new();
    let mut h = Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(3);
    let gnu = h.as_gnu_mut().unwrap();
    octal(&mut gnu.sparse[0].offset, 0);
    octal(&mut gnu.sparse[0].numbytes, 3);
    octal(&mut gnu.realsize, 1 << 20);
    h.set_cksum();
    l.builder().append(&h, &b"xyz"[..]).unwrap();
    let err = refused_extension(&mut l);
    assert!(err.contains("not at the file's real size"), "{err}");
}

/// Runs GNU tar, the writer of `--acls` layers and of `S` members.
fn gnu_tar(args: &[&str], dir: &std::path::Path) -> Option<Vec<u8>> {
    let out = std::process::Command::new("tar")
        .args(args)
        .args(["-cf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .ok()?;
    assert!(out.status.success(), "tar {args:?}: {:?}", out.stderr);
    Some(out.stdout)
}

#[test]
fn layers_written_by_gnu_tar_with_acls_xattrs_and_holes_unpack_as_root() {
    let test = "layers_written_by_gnu_tar_with_acls_xattrs_and_holes_unpack_as_root";
    if !require_root(test) {
        return;
    }
    let version = std::process::Command::new("tar").arg("--version").output();
    if !version.is_ok_and(|v| v.stdout.starts_with(b"tar (GNU tar)")) {
        eprintln!("{test}: skipped, needs GNU tar on PATH");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let (acl_dir, sparse_dir) = (src.path().join("acl"), src.path().join("sparse"));
    fs::create_dir_all(&acl_dir).unwrap();
    fs::create_dir_all(&sparse_dir).unwrap();
    let f = acl_dir.join("ping");
    fs::write(&f, b"elf").unwrap();
    let acl = acl_xattr();
    let set = |name: &str, value: &[u8]| {
        rustix::fs::setxattr(&f, name, value, rustix::fs::XattrFlags::empty()).unwrap()
    };
    set("system.posix_acl_access", &acl);
    set("security.capability", &CAP_WITH_NEWLINE);
    let mut sparse = vec![0u8; 100_000];
    sparse[50_000..50_003].copy_from_slice(b"abc");
    let hole = fs::File::create(sparse_dir.join("holes")).unwrap();
    hole.set_len(100_000).unwrap();
    std::os::unix::fs::FileExt::write_at(&hole, b"abc", 50_000).unwrap();

    // GNU tar writes the ACL as multi-line text (SCHILY.acl.access) and as
    // the binary xattr, whose group id 10 holds a newline.
    let posix = ["--format=posix", "--acls", "--xattrs", "--xattrs-include=*"];
    let tar = gnu_tar(&posix, &acl_dir).unwrap();
    assert!(tar.windows(17).any(|w| w == b"SCHILY.acl.access"));
    let sb = Sandbox::new();
    sb.unpack(&tar).unwrap();
    let ping = sb.path("ping");
    assert_eq!(fs::read(&ping).unwrap(), b"elf");
    assert_eq!(
        xattr(&ping, "system.posix_acl_access").as_deref(),
        Some(&acl[..])
    );
    assert_eq!(
        xattr(&ping, "security.capability").as_deref(),
        Some(&CAP_WITH_NEWLINE[..])
    );
    sb.assert_contained();

    let tar = gnu_tar(&["--format=gnu", "--sparse"], &sparse_dir).unwrap();
    assert_eq!(tar[512 + 156], b'S', "GNU tar wrote no sparse member");
    let sb = Sandbox::new();
    sb.unpack(&tar).unwrap();
    assert_eq!(fs::read(sb.path("holes")).unwrap(), sparse);
    sb.assert_contained();
}
