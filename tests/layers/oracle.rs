//! The layer cache against an oracle: the overlay view of cvmd's cached
//! layers must equal what `umoci unpack` makes of the same image, and every
//! compression must unpack to the same layer dirs.
//!
//! Needs root (whiteout devices, trusted xattrs, overlay) and
//! docker-registry, skopeo and umoci; skips with a reason otherwise.

use crate::common::image::{Compression, Format, Image, ImageBuilder, Layer, LayerBuilder};
use crate::common::layers::*;
use crate::common::Registry;

/// Base system: every kind of entry and metadata the later layers change.
fn base_layer(c: Compression) -> Layer {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .owner(0, 42)
        .file("etc/shadow", b"root:*:19000::::::\n", 0o640)
        .owner(0, 0)
        .dir("bin", 0o755)
        .file("bin/busybox", b"\x7fELF busybox", 0o755)
        .symlink("bin/sh", "/bin/busybox")
        .file("bin/su", b"\x7fELF su", 0o4755)
        .file("bin/wall", b"\x7fELF wall", 0o2755)
        .dir("tmp", 0o1777)
        .dir("usr/lib", 0o755)
        .file("usr/lib/libc.so", b"libc", 0o644)
        .symlink("lib", "usr/lib")
        .file("usr/bin/tool", b"tool v1", 0o755)
        .hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .hardlink("usr/bin/tool-alias2", "/usr/bin/tool")
        .symlink("usr/bin/rel", "../lib/libc.so")
        // Values holding a newline (0x0a): PAX records are cut by length.
        .file_with_xattrs(
            "usr/bin/caps-newline",
            b"\x7fELF caps",
            0o755,
            &[
                (
                    "security.capability",
                    &[
                        1, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ][..],
                ),
                ("user.lines", b"one\ntwo\n9 path=x\n"),
            ],
        )
        .file_with_xattrs(
            "usr/bin/ping",
            b"\x7fELF ping",
            0o755,
            &[
                (
                    "security.capability",
                    &[
                        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ][..],
                ),
                ("user.origin", b"base"),
            ],
        )
        .owner(1000, 1000)
        .dir("home/u", 0o700)
        .file("home/u/.profile", b"export A=1\n", 0o600)
        .owner(0, 0)
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop0", 7, 0, 0o660)
        .fifo("run/initctl", 0o600)
        .file("var/cache/a", b"a", 0o644)
        .file("var/cache/b", b"b", 0o644)
        .dir("var/cache/sub", 0o755)
        .file("var/cache/sub/c", b"c", 0o644)
        .file("var/log/old.log", b"old", 0o644)
        .file("file_to_dir", b"I was a file", 0o644)
        .file("dir_to_file/inner", b"I was in a dir", 0o644)
        .file("recreate/x", b"first x", 0o644)
        .file("recreate/keep", b"hidden after recreation", 0o644)
        .file("gone/deep/file", b"bye", 0o644)
        .file("link_to_file", b"was a symlink target", 0o644)
        .build(c)
}

/// Deletions, an opaque dir, type changes, a same-layer delete+recreate.
fn middle_layer(c: Compression) -> Layer {
    LayerBuilder::new()
        .whiteout("etc/shadow")
        .whiteout("gone")
        .whiteout("var/log/old.log")
        .opaque("var/cache")
        .file("var/cache/fresh", b"only me", 0o644)
        .dir("file_to_dir", 0o750)
        .file("file_to_dir/child", b"now a dir", 0o644)
        .file("dir_to_file", b"now a file", 0o600)
        // Deleted and recreated in one layer: whiteout first, then the dir
        // (OCI: the whiteout applies to lower layers only).
        .whiteout("recreate")
        .dir("recreate", 0o755)
        .file("recreate/y", b"second y", 0o644)
        .file_with_xattrs("etc/motd", b"hello", 0o644, &[("user.lang", b"en")])
        .build(c)
}

/// Metadata changes on existing paths, a deleted hardlink member, a
/// symlink replaced by a file and a dir deleted in one layer and recreated
/// in the next.
fn top_layer(c: Compression) -> Layer {
    LayerBuilder::new()
        .owner(1000, 100)
        .file("bin/su", b"\x7fELF su", 0o755)
        .owner(0, 0)
        .file(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nu:x:1000:100::/home/u:/bin/sh\n",
            0o644,
        )
        .whiteout("usr/bin/tool-alias2")
        .whiteout("lib")
        .file("lib", b"no longer a symlink", 0o444)
        .whiteout("var/cache/fresh")
        .dir("gone", 0o711)
        .file("gone/back", b"recreated a layer later", 0o644)
        // The parent comes with its entry, as docker writes layers: a layer
        // without it gets a 0755 root-owned `tmp` (as docker and containerd
        // do), which hides the lower 1777 mode in the merged view while
        // umoci, unpacking onto the merged tree, keeps it.
        .dir("tmp", 0o1777)
        .file("tmp/.keep", b"", 0o644)
        .build(c)
}

fn system_image(c: Compression) -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(base_layer(c))
        .layer(middle_layer(c))
        .layer(top_layer(c))
        .build()
}

/// Deep opaque dirs, a whole tree deleted and rebuilt, modes that an
/// unprivileged unpack could not write into, owners on dirs.
fn tree_image() -> Image {
    let l1 = LayerBuilder::new()
        .owner(33, 33)
        .dir("srv/www", 0o555)
        .file("srv/www/index.html", b"<h1>v1</h1>", 0o444)
        .file("srv/www/assets/app.js", b"v1()", 0o444)
        .owner(0, 0)
        .dir("opt/a/b/c", 0o755)
        .file("opt/a/b/c/d", b"d", 0o644)
        .file("opt/a/b/e", b"e", 0o644)
        .file("opt/a/f", b"f", 0o644)
        .build(Compression::Gzip);
    let l2 = LayerBuilder::new()
        .opaque("opt/a/b")
        .file("opt/a/b/new", b"new", 0o644)
        .whiteout("srv/www")
        // Not zstd: umoci 0.4.7 cannot read it (the compression test
        // covers zstd against gzip).
        .build(Compression::MultiGzip);
    let l3 = LayerBuilder::new()
        .owner(33, 33)
        .dir("srv/www", 0o755)
        .file("srv/www/index.html", b"<h1>v2</h1>", 0o644)
        .owner(0, 0)
        // An opaque marker in a dir that exists below (merged from two
        // layers). Not one in a dir that does not: cvmd, like docker and
        // containerd, creates the dir, while umoci does not.
        .opaque("opt/a")
        .file("opt/a/z", b"z", 0o644)
        .build(Compression::None);
    // OCI: cvmd refuses the non-standard Docker media type for uncompressed
    // layers.
    ImageBuilder::new(Format::Oci)
        .layer(l1)
        .layer(l2)
        .layer(l3)
        .build()
}

/// Docker-style image: two layers, each a handful of files, mixed
/// compressions, the second rewriting the first's hardlinked files.
fn links_image() -> Image {
    let l1 = LayerBuilder::new()
        .file("data/one", b"1", 0o644)
        .hardlink("data/two", "data/one")
        .hardlink("data/three", "data/one")
        .symlink("data/abs", "/data/one")
        .symlink("data/dangling", "/nowhere/at/all")
        .symlink("data/dot", ".")
        .build(Compression::MultiGzip);
    let l2 = LayerBuilder::new()
        .file("data/two", b"2", 0o640)
        .file("data/four", b"4", 0o644)
        .hardlink("data/five", "data/four")
        .build(Compression::Gzip);
    ImageBuilder::new(Format::Docker)
        .layer(l1)
        .layer(l2)
        .build()
}

fn check_against_umoci(reg: &Registry, repo: &str, img: &Image) {
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let reference = push(reg, repo, "v1", img);
    cvmd.pull_ok(&reference);

    let work = tempfile::tempdir().unwrap();
    let bundle = umoci_rootfs(&reference, work.path());
    let want = snapshot(&bundle.join("rootfs"), Xattrs::NoOverlay);

    for mode in ["overlay", "flat"] {
        let view = merged_view(&sandbox.cache(), &reference, mode);
        let got = snapshot(&view.target, Xattrs::NoOverlay);
        assert_no_whiteouts(&got);
        assert_same_tree(&format!("{repo}: cvmd {mode} vs umoci"), &got, &want);
    }
    sandbox.assert_outside_untouched();
    assert!(staging(&sandbox.cache()).is_empty());
}

#[test]
fn layers_merged_view_matches_umoci_for_a_system_image() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let img = system_image(Compression::Gzip);
    check_against_umoci(&reg, "oracle/system", &img);

    // Spot checks, so a shared blind spot of umoci and cvmd still shows.
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let reference = push(&reg, "oracle/system", "again", &img);
    cvmd.pull_ok(&reference);
    let view = merged_view(&sandbox.cache(), &reference, "overlay");
    let t = snapshot(&view.target, Xattrs::NoOverlay);
    for gone in [
        "etc/shadow",
        "gone/deep",
        "var/log/old.log",
        "var/cache/a",
        "var/cache/sub",
        "recreate/x",
        "recreate/keep",
        "var/cache/fresh",
        "usr/bin/tool-alias2",
        "dir_to_file/inner",
    ] {
        assert!(!t.contains_key(gone), "{gone} should be deleted");
    }
    for here in ["gone/back", "recreate/y", "file_to_dir/child", "etc/motd"] {
        assert!(t.contains_key(here), "{here} missing");
    }
    assert_eq!(t["bin/su"].mode, 0o755);
    assert_eq!((t["bin/su"].uid, t["bin/su"].gid), (1000, 100));
    assert_eq!(t["bin/wall"].mode, 0o2755);
    assert_eq!(t["tmp"].mode, 0o1777);
    assert_eq!(t["dir_to_file"].mode, 0o600);
    assert!(matches!(t["lib"].kind, Kind::File { .. }));
    assert_eq!(
        t["bin/sh"].kind,
        Kind::Symlink {
            target: "/bin/busybox".into()
        }
    );
    assert_eq!(t["dev/null"].kind, Kind::Char { major: 1, minor: 3 });
    assert_eq!(
        t["usr/bin/tool-alias"].link_group.as_deref(),
        Some("usr/bin/tool")
    );
    assert!(t["usr/bin/ping"]
        .xattrs
        .iter()
        .any(|(k, _)| k == "security.capability"));
}

#[test]
fn layers_merged_view_matches_umoci_for_opaque_trees() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    check_against_umoci(&reg, "oracle/tree", &tree_image());
}

#[test]
fn layers_merged_view_matches_umoci_for_hardlinks_and_symlinks() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    check_against_umoci(&reg, "oracle/links", &links_image());
}

/// The same tars compressed four ways unpack to identical layer dirs
/// (whiteout devices and opaque xattrs included). Each pull gets its own
/// cache: the diff_ids are equal, so one cache would share the layers.
#[test]
fn layers_every_compression_unpacks_to_the_same_tree() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let mut trees = Vec::new();
    for c in [
        Compression::Gzip,
        Compression::MultiGzip,
        Compression::Zstd,
        Compression::None,
    ] {
        let img = system_image(c);
        let sandbox = Sandbox::new();
        let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
        let reference = push(
            &reg,
            "oracle/compression",
            &format!("{c:?}").to_lowercase(),
            &img,
        );
        cvmd.pull_ok(&reference);
        let layers: Vec<_> = img
            .layers
            .iter()
            .map(|l| {
                let dir = layer_dir(&sandbox.cache(), &l.diff_id);
                assert!(dir.join("layer.json").is_file(), "{c:?}: layer unpublished");
                snapshot(&dir.join("root"), Xattrs::All)
            })
            .collect();
        trees.push((c, layers));
    }
    let (_, gzip) = &trees[0];
    assert!(gzip[1]
        .values()
        .any(|n| n.kind == Kind::Char { major: 0, minor: 0 }));
    assert!(gzip[1]["var/cache"]
        .xattrs
        .contains(&("trusted.overlay.opaque".to_string(), b"y".to_vec())));
    for (c, layers) in &trees[1..] {
        for (i, (got, want)) in layers.iter().zip(gzip).enumerate() {
            assert_same_tree(&format!("{c:?} layer {i} vs gzip"), got, want);
        }
    }
}
