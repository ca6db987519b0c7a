//! Well-formed layers: every entry type and all metadata land as written.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::rc::Rc;

use tar::EntryType;

use super::*;

/// A v2 file capability granting cap_net_raw (bit 13), effective
/// (linux/capability.h `struct vfs_cap_data`).
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn every_entry_type_is_created_as_root() {
    if !require_root("every_entry_type_is_created_as_root") {
        return;
    }
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.dir("d/")
        .file("d/f", b"hello")
        .symlink("d/s", "/abs/target")
        .hardlink("d/h", "d/f")
        .entry("d/null", EntryType::Char, "", b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .entry("d/loop", EntryType::Block, "", b"", |h| {
            h.set_device_major(7).unwrap();
            h.set_device_minor(0).unwrap();
        })
        .entry("d/fifo", EntryType::Fifo, "", b"", |_| {});
    let stats = sb.unpack(&l.bytes()).unwrap();

    assert_eq!(fs::read(sb.path("d/f")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(sb.path("d/s")).unwrap().to_str(),
        Some("/abs/target")
    );
    let (f, h) = (
        fs::metadata(sb.path("d/f")).unwrap(),
        fs::metadata(sb.path("d/h")).unwrap(),
    );
    assert_eq!((f.ino(), f.nlink()), (h.ino(), 2));
    let null = fs::symlink_metadata(sb.path("d/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    let lp = fs::symlink_metadata(sb.path("d/loop")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 0));
    assert!(fs::symlink_metadata(sb.path("d/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        (
            stats.entries,
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.hardlinks,
            stats.nodes
        ),
        (7, 1, 1, 1, 1, 3)
    );
    assert_eq!((stats.file_bytes, stats.skipped_devices), (5, 0));
    sb.assert_contained();
}

#[test]
fn whiteouts_and_opaque_markers_take_overlay_form() {
    if !require_root("whiteouts_and_opaque_markers_take_overlay_form") {
        return;
    }
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.dir("a/")
        .file("a/.wh.gone", b"")
        // Parent missing from the tar: created for the marker.
        .file("o/.wh..wh..opq", b"")
        // Whited out, then recreated as a dir in the same layer.
        .file(".wh.re", b"")
        .dir("re/")
        // Same-layer content survives a later whiteout of its name.
        .file("keep", b"k")
        .file(".wh.keep", b"")
        .dir("kd/")
        .file(".wh.kd", b"");
    let stats = sb.unpack(&l.bytes()).unwrap();

    let wh = fs::symlink_metadata(sb.path("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!sb.path("a/.wh.gone").exists());
    assert_eq!(
        xattr(&sb.path("o"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&sb.path("a"), "trusted.overlay.opaque"), None);
    assert!(sb.path("re").is_dir());
    assert_eq!(
        xattr(&sb.path("re"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(sb.path("keep")).unwrap(), b"k");
    assert_eq!(
        xattr(&sb.path("kd"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(stats.opaque_dirs, 3);
    sb.assert_contained();
}

#[test]
fn modes_ownership_xattrs_and_times_are_applied() {
    if !require_root("modes_ownership_xattrs_and_times_are_applied") {
        return;
    }
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.entry("./", EntryType::Directory, "", b"", |h| h.set_mode(0o750))
        .entry("tmp/", EntryType::Directory, "", b"", |h| {
            h.set_mode(0o1777)
        })
        .entry("suid", EntryType::Regular, "", b"x", |h| {
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(1000);
        })
        .entry("sgid", EntryType::Regular, "", b"x", |h| {
            h.set_mode(0o2711);
            h.set_gid(50);
        })
        .pax(&[
            ("SCHILY.xattr.security.capability", &CAP_NET_RAW),
            ("SCHILY.xattr.user.note", b"hi"),
            ("mtime", b"1500000000.25"),
        ])
        .entry("ping", EntryType::Regular, "", b"elf", |h| h.set_uid(1234))
        .pax(&[
            ("SCHILY.xattr.user.skipped", b"v"),
            ("SCHILY.xattr.trusted.t", b"1"),
        ])
        .entry("link", EntryType::Symlink, "ping", b"", |h| {
            h.set_uid(42);
            h.set_gid(43);
            h.set_mtime(1_400_000_000);
        })
        .entry("dir/", EntryType::Directory, "", b"", |h| {
            h.set_mode(0o700);
            h.set_uid(7);
            h.set_mtime(1_300_000_000);
        })
        .file("dir/child", b"written after the dir's header");
    sb.unpack(&l.bytes()).unwrap();

    let meta = |p: &str| fs::symlink_metadata(sb.path(p)).unwrap();
    assert_eq!(fs::metadata(&sb.dest).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(fs::metadata(&sb.dest).unwrap().mtime(), MTIME.cast_signed());
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    // setuid survives because chmod runs after chown.
    assert_eq!(
        (meta("suid").mode() & 0o7777, meta("suid").uid()),
        (0o4755, 1000)
    );
    assert_eq!(
        (meta("sgid").mode() & 0o7777, meta("sgid").gid()),
        (0o2711, 50)
    );
    let ping = sb.path("ping");
    assert_eq!(meta("ping").uid(), 1234);
    assert_eq!(
        xattr(&ping, "security.capability").as_deref(),
        Some(&CAP_NET_RAW[..])
    );
    assert_eq!(xattr(&ping, "user.note").as_deref(), Some(&b"hi"[..]));
    assert_eq!(
        (meta("ping").mtime(), meta("ping").mtime_nsec()),
        (1_500_000_000, 250_000_000)
    );
    let link = meta("link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        (link.uid(), link.gid(), link.mtime()),
        (42, 43, 1_400_000_000)
    );
    assert_eq!(xattr(&sb.path("link"), "user.skipped"), None);
    assert_eq!(
        xattr(&sb.path("link"), "trusted.t").as_deref(),
        Some(&b"1"[..])
    );
    // The dir's times and mode were set after its child was written.
    let dir = meta("dir");
    assert_eq!(
        (dir.mode() & 0o7777, dir.uid(), dir.mtime()),
        (0o700, 7, 1_300_000_000)
    );
    sb.assert_contained();
}

#[test]
fn later_entries_replace_earlier_ones_in_the_same_layer() {
    if !require_root("later_entries_replace_earlier_ones_in_the_same_layer") {
        return;
    }
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.file("x", b"file first")
        .dir("x/")
        .file("x/y", b"in dir")
        .dir("d/")
        .dir("d/sub/")
        .file("d/sub/c", b"c")
        .file("d", b"now a file")
        .file("f", b"old")
        .file("f", b"new")
        .entry("kept/", EntryType::Directory, "", b"", |h| {
            h.set_mode(0o700)
        })
        .file("kept/child", b"c")
        .entry("kept/", EntryType::Directory, "", b"", |h| {
            h.set_mode(0o751)
        })
        .symlink("s", "x")
        .file("s", b"not through the link");
    sb.unpack(&l.bytes()).unwrap();

    assert_eq!(fs::read(sb.path("x/y")).unwrap(), b"in dir");
    assert_eq!(fs::read(sb.path("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(sb.path("f")).unwrap(), b"new");
    assert_eq!(fs::read(sb.path("kept/child")).unwrap(), b"c");
    assert_eq!(
        fs::metadata(sb.path("kept")).unwrap().mode() & 0o7777,
        0o751
    );
    assert!(fs::symlink_metadata(sb.path("s")).unwrap().is_file());
    sb.assert_contained();
}

#[test]
fn long_names_pax_paths_and_missing_parents() {
    if !require_root("long_names_pax_paths_and_missing_parents") {
        return;
    }
    let sb = Sandbox::new();
    let long = format!("deep/{}/file", "n".repeat(150));
    let mut l = Layer::new();
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    l.builder()
        .append_data(&mut h, &long, &b"long"[..])
        .unwrap();
    l.pax(&[("path", b"pax/named/file")])
        .file("ignored-header-name", b"pax");
    sb.unpack(&l.bytes()).unwrap();

    assert_eq!(fs::read(sb.dest.join(&long)).unwrap(), b"long");
    assert_eq!(fs::read(sb.path("pax/named/file")).unwrap(), b"pax");
    assert!(!sb.path("ignored-header-name").exists());
    assert_eq!(
        fs::metadata(sb.path("pax/named")).unwrap().mode() & 0o7777,
        0o755
    );
    sb.assert_contained();
}

/// Decision: a parent path through a symlink that stays beneath the root is
/// followed (`l -> sub`, `l/x` writes `sub/x`), as GNU tar and docker do.
#[test]
fn parent_through_inner_symlink_is_followed() {
    if !require_root("parent_through_inner_symlink_is_followed") {
        return;
    }
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.dir("sub/")
        .symlink("l", "sub")
        .file("l/x", b"via link")
        .dir("a/")
        .symlink("a/up", "../sub")
        .file("a/up/y", b"via sibling link");
    sb.unpack(&l.bytes()).unwrap();
    assert_eq!(fs::read(sb.path("sub/x")).unwrap(), b"via link");
    assert_eq!(fs::read(sb.path("sub/y")).unwrap(), b"via sibling link");
    assert!(fs::symlink_metadata(sb.path("l"))
        .unwrap()
        .file_type()
        .is_symlink());
    sb.assert_contained();
}

/// Reports EOF as seen, to show the caller's hash covered every byte.
struct EofProbe<R> {
    inner: R,
    hit_eof: Rc<Cell<bool>>,
}

impl<R: Read> Read for EofProbe<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof.set(true);
        }
        Ok(n)
    }
}

#[test]
fn reader_is_drained_to_eof() {
    let sb = Sandbox::new();
    let mut tar = Layer::new().file("f", b"data").bytes();
    tar.extend_from_slice(&[0u8; 8192]); // record padding, as tar(1) writes
    let hit_eof = Rc::new(Cell::new(false));
    let probe = EofProbe {
        inner: &tar[..],
        hit_eof: Rc::clone(&hit_eof),
    };
    let mut o = opts();
    o.preserve_ownership = false;
    let stats = unpack_layer(probe, &sb.dest, &o).unwrap();
    assert!(hit_eof.get());
    // One end-of-archive block is read by the parser, the rest drained.
    assert_eq!(stats.trailing_bytes, 512 + 8192);
    sb.assert_contained();
}

#[test]
fn ownership_is_left_alone_when_not_preserved() {
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.entry("f", EntryType::Regular, "", b"x", |h| {
        h.set_uid(1234);
        h.set_mode(0o640);
    });
    let mut o = opts();
    o.preserve_ownership = false;
    unpack_layer(&l.bytes()[..], &sb.dest, &o).unwrap();
    let m = fs::metadata(sb.path("f")).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (rustix::process::geteuid().as_raw(), 0o640)
    );
    sb.assert_contained();
}

#[test]
fn estargz_metadata_is_skipped_only_at_the_root_and_only_when_asked() {
    let tar = Layer::new()
        .file(".no.prefetch.landmark", b"\x0f")
        .file("./.prefetch.landmark", b"\x0f")
        .dir("sub/")
        .file("sub/stargz.index.json", b"{}")
        .file("keep", b"data")
        .file("stargz.index.json", b"{\"version\":1}")
        .bytes();
    let names = |skip: bool| {
        let sb = Sandbox::new();
        let mut o = opts();
        o.preserve_ownership = false;
        o.skip_estargz_metadata = skip;
        unpack_layer(&tar[..], &sb.dest, &o).unwrap();
        let mut names: Vec<String> = fs::read_dir(&sb.dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let nested = sb.dest.join("sub/stargz.index.json").exists();
        (names, nested)
    };
    assert_eq!(names(true), (vec!["keep".into(), "sub".into()], true));
    let (all, nested) = names(false);
    assert_eq!(
        all,
        [
            ".no.prefetch.landmark",
            ".prefetch.landmark",
            "keep",
            "stargz.index.json",
            "sub"
        ]
    );
    assert!(nested);
}
