//! Hostile layers pulled by `cvmd pull` from a real registry: each is
//! refused with one error line naming the entry (or digests) and the image,
//! writes nothing outside the cache dir, and leaves no layer dir behind.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::image::{compress, Compression, Format, ImageBuilder, Layer, LayerBuilder};
use crate::common::layers::*;
use crate::common::Registry;

/// A host path a hostile layer would hit if it escaped; unique per test.
fn host_target(tag: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/cvmd-layertest-{tag}-{}", std::process::id()))
}

struct Pulled {
    sandbox: Sandbox,
    reference: String,
    out: std::process::Output,
    layer: Layer,
}

/// Pushes an image of one benign layer then `layer`, pulls it.
fn pull_layer(repo: &str, layer: Layer, extra: &[&str]) -> (Registry, Pulled) {
    let benign = LayerBuilder::new()
        .file("etc/hostname", b"ok\n", 0o644)
        .build(Compression::Gzip);
    let img = ImageBuilder::new(Format::Oci)
        .layer(benign)
        .layer(layer.clone())
        .build();
    pull_image(repo, img, layer, extra)
}

fn pull_image(
    repo: &str,
    img: crate::common::image::Image,
    layer: Layer,
    extra: &[&str],
) -> (Registry, Pulled) {
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let reference = push(&reg, repo, "v1", &img);
    let out = CvmdOnCache::new(&sandbox.cache(), &reg.host()).pull(&reference, extra);
    (
        reg,
        Pulled {
            sandbox,
            reference,
            out,
            layer,
        },
    )
}

impl Pulled {
    /// Refused: exit 1, one error line naming `entry` and the image, nothing
    /// outside the cache, no layer dir for the bad layer, staging empty.
    fn assert_refused(&self, entry: &str, why: &str) -> String {
        let line = error_line(&self.out);
        eprintln!("refused as expected: {line}");
        assert!(
            line.contains(&format!("{entry:?}")),
            "error should name entry {entry:?}: {line}"
        );
        assert!(
            line.contains(&self.reference),
            "error should name image {}: {line}",
            self.reference
        );
        assert!(line.contains(why), "error should say {why:?}: {line}");
        self.assert_nothing_left();
        line
    }

    fn assert_nothing_left(&self) {
        let cache = self.sandbox.cache();
        self.sandbox.assert_outside_untouched();
        assert!(
            !layer_dir(&cache, &self.layer.diff_id).exists(),
            "the bad layer was published"
        );
        assert!(staging(&cache).is_empty(), "staging: {:?}", staging(&cache));
        // No image record either: the pull failed.
        assert!(dir_names(&cache.join("images")).is_empty());
    }
}

#[test]
fn layers_hostile_dotdot_path_is_refused() {
    require!(can_run());
    for (i, name) in ["../../../../../escape", "a/b/../../../escape"]
        .iter()
        .enumerate()
    {
        let layer = LayerBuilder::new()
            .file("fine", b"fine", 0o644)
            .raw_entry(name.as_bytes(), |_| {}, b"evil")
            .build(Compression::Gzip);
        let (_reg, p) = pull_layer(&format!("hostile/dotdot{i}"), layer, &[]);
        p.assert_refused(name, "escapes the layer root");
    }
}

#[test]
fn layers_hostile_absolute_path_lands_inside_the_layer() {
    require!(can_run());
    let host = host_target("abs");
    let name = format!("{}/x", host.display());
    let layer = LayerBuilder::new()
        .raw_entry(name.as_bytes(), |_| {}, b"inside")
        .build(Compression::Gzip);
    let (_reg, p) = pull_layer("hostile/abs", layer.clone(), &[]);
    assert_success(&p.out, "pull of /abs/x");
    // Leading `/` stripped: `/tmp/…/x` is the layer's own `tmp/…/x`.
    let inside = layer_dir(&p.sandbox.cache(), &layer.diff_id)
        .join("root")
        .join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read(&inside).unwrap(), b"inside");
    assert!(!host.exists(), "{} written on the host", host.display());
    p.sandbox.assert_outside_untouched();
    assert!(staging(&p.sandbox.cache()).is_empty());
}

#[test]
fn layers_hostile_write_through_absolute_symlink_is_refused() {
    require!(can_run());
    let host = host_target("slash");
    let through = format!("l{}", host.display());
    let layer = LayerBuilder::new()
        .symlink("l", "/")
        .file(&through, b"evil", 0o644)
        .build(Compression::Gzip);
    let (_reg, p) = pull_layer("hostile/slash", layer, &[]);
    p.assert_refused(&through, "leads outside the layer root");
    assert!(!host.exists(), "{} written on the host", host.display());
}

#[test]
fn layers_hostile_write_through_dotdot_symlink_is_refused() {
    require!(can_run());
    // The layer root is <sandbox>/cache/layers/staging/<id>/root: `../..`
    // is the staging dir, five levels up the sandbox, both watched.
    for (i, target) in ["../..", "../../../../.."].iter().enumerate() {
        let layer = LayerBuilder::new()
            .symlink("l", target)
            .file("l/escape", b"evil", 0o644)
            .build(Compression::Gzip);
        let (_reg, p) = pull_layer(&format!("hostile/updir{i}"), layer, &[]);
        p.assert_refused("l/escape", "leads outside the layer root");
    }
}

#[test]
fn layers_hostile_symlink_chains_are_refused() {
    require!(can_run());
    let host = host_target("chain");
    // a -> b -> c -> /tmp: the last hop leaves the root.
    let leaf = format!("a/{}", host.file_name().unwrap().to_string_lossy());
    let layer = LayerBuilder::new()
        .symlink("a", "b")
        .symlink("b", "sub/c")
        .dir("sub", 0o755)
        .symlink("sub/c", "/tmp")
        .file(&leaf, b"evil", 0o644)
        .build(Compression::Gzip);
    let (_reg, p) = pull_layer("hostile/chain", layer, &[]);
    p.assert_refused(&leaf, "leads outside the layer root");
    assert!(!host.exists(), "{} written on the host", host.display());

    // A loop: x -> y -> x.
    let layer = LayerBuilder::new()
        .symlink("x", "y")
        .symlink("y", "x")
        .file("x/f", b"evil", 0o644)
        .build(Compression::Gzip);
    let (_reg, p) = pull_layer("hostile/loop", layer, &[]);
    p.assert_refused("x/f", "symlink loop");
}

#[test]
fn layers_hostile_hardlinks_to_outside_targets_are_refused() {
    require!(can_run());
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    let cases: [(&str, LayerBuilder, &str); 3] = [
        // Up and out: the sandbox's own sentinel, five levels up.
        (
            "updir",
            LayerBuilder::new().hardlink("h", "../../../../../sentinel"),
            "escapes the layer root",
        ),
        // Through a symlink to the host's /etc.
        (
            "symlink",
            LayerBuilder::new()
                .symlink("l", "/etc")
                .hardlink("h", "l/passwd"),
            "escapes the layer root",
        ),
        // Absolute: the layer's own etc/passwd, which it lacks.
        (
            "absolute",
            LayerBuilder::new().hardlink("h", "/etc/passwd"),
            "does not exist earlier in this layer",
        ),
    ];
    for (tag, builder, why) in cases {
        let layer = builder.build(Compression::Gzip);
        let (_reg, p) = pull_layer(&format!("hostile/hardlink-{tag}"), layer, &[]);
        p.assert_refused("h", why);
        assert_eq!(
            std::fs::metadata(p.sandbox.dir.path().join("sentinel"))
                .unwrap()
                .nlink(),
            1
        );
    }
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd_links,
        "/etc/passwd gained a link"
    );
}

#[test]
fn layers_hostile_whiteout_escapes_are_refused() {
    require!(can_run());
    let host = host_target("whiteout");
    std::fs::write(&host, b"must survive").unwrap();
    let host_wh = format!("l/.wh.{}", host.file_name().unwrap().to_string_lossy());
    let cases: Vec<(String, LayerBuilder, &str)> = vec![
        (
            ".wh...".into(),
            LayerBuilder::new().raw_entry(b".wh...", |_| {}, b""),
            "malformed whiteout",
        ),
        (
            "a/.wh..".into(),
            LayerBuilder::new()
                .dir("a", 0o755)
                .raw_entry(b"a/.wh..", |_| {}, b""),
            "malformed whiteout",
        ),
        (
            "../../../../../.wh.sentinel".into(),
            LayerBuilder::new().raw_entry(b"../../../../../.wh.sentinel", |_| {}, b""),
            "escapes the layer root",
        ),
        (
            host_wh.clone(),
            LayerBuilder::new()
                .symlink("l", "/tmp")
                .raw_entry(host_wh.as_bytes(), |_| {}, b""),
            "leads outside the layer root",
        ),
        (
            "l/.wh..wh..opq".into(),
            LayerBuilder::new()
                .symlink("l", "/tmp")
                .raw_entry(b"l/.wh..wh..opq", |_| {}, b""),
            "leads outside the layer root",
        ),
    ];
    for (i, (entry, builder, why)) in cases.into_iter().enumerate() {
        let layer = builder.build(Compression::Gzip);
        let (_reg, p) = pull_layer(&format!("hostile/whiteout{i}"), layer, &[]);
        p.assert_refused(&entry, why);
    }
    assert_eq!(std::fs::read(&host).unwrap(), b"must survive");
    let tmp_opaque = rustix::fs::getxattr("/tmp", "trusted.overlay.opaque", &mut [0u8; 8][..]);
    assert!(tmp_opaque.is_err(), "/tmp was marked opaque");
    std::fs::remove_file(&host).unwrap();
}

#[test]
fn layers_hostile_diff_id_mismatch_is_refused() {
    require!(can_run());
    let layer = LayerBuilder::new()
        .file("etc/issue", b"honest content\n", 0o644)
        .build(Compression::Gzip);
    let claimed = format!("sha256:{}", "0".repeat(63) + "1");
    let c = claimed.clone();
    let img = ImageBuilder::new(Format::Oci)
        .layer(layer.clone())
        .edit_config(move |cfg| cfg["rootfs"]["diff_ids"][0] = c.into())
        .build();
    let (_reg, p) = pull_image("hostile/diffid", img, layer.clone(), &[]);
    let line = error_line(&p.out);
    for want in [&layer.digest, &layer.diff_id, &claimed, &p.reference] {
        assert!(
            line.contains(want.as_str()),
            "error should name {want}: {line}"
        );
    }
    p.assert_nothing_left();
    let cache = p.sandbox.cache();
    assert!(!layer_dir(&cache, &claimed).exists());
    assert!(published(&cache).is_empty(), "{:?}", published(&cache));
    assert!(
        !blob_path(&cache, &layer.digest).exists(),
        "an unverified layer blob was stored"
    );
}

/// 200 MiB of zeros in one file, as gzip members of 1 MiB each (~200 KiB
/// in all, and quick to build); the diff_id is made up, since the bound
/// must stop the unpack long before it could be checked.
fn gzip_bomb() -> Layer {
    const MIB: usize = 1 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_path("bomb").unwrap();
    h.set_size(200 * MIB as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut blob = compress(h.as_bytes(), Compression::Gzip);
    let zeros = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; MIB]).unwrap();
        e.finish().unwrap()
    };
    for _ in 0..200 {
        blob.extend_from_slice(&zeros);
    }
    blob.extend(compress(&[0u8; 1024], Compression::Gzip));
    Layer::from_blob(
        blob,
        &crate::common::sha256_digest(b"not checked"),
        Compression::Gzip,
    )
}

#[test]
fn layers_hostile_gzip_bomb_is_bounded() {
    require!(can_run());
    let bomb = gzip_bomb();
    assert!(bomb.size < 1 << 20, "the bomb is small: {}", bomb.size);
    let (_reg, p) = pull_layer("hostile/bomb", bomb, &["--max-layer-size", "50MiB"]);
    let line = p.assert_refused("bomb", "unpacks to more than 52428800 bytes");
    assert!(
        line.contains("--max-layer-size"),
        "names the setting to raise: {line}"
    );
    let du = dir_bytes(&p.sandbox.cache());
    assert!(
        du < 60 << 20,
        "cache holds {du} bytes after refusing the bomb"
    );
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}
