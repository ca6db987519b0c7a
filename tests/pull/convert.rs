//! `cvmd convert IMAGE TARGET` against a real registry: the eStargz (or
//! zstd:chunked) copy carries a verifiable TOC per layer, and pulled fully
//! (`cvmd rootfs`) it gives the original's tree, the TOC and landmark files
//! left out.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use std::path::Path;

use cvmd::estargz::{self, EntryKind, TocLimits, TOC_DIGEST_ANNOTATION};
use cvmd::zstd_chunked;

use crate::common::image::{pseudo_random, Compression, Format, Image, ImageBuilder, LayerBuilder};
use crate::common::layers::*;
use crate::common::registry::push;
use crate::common::Registry;

fn image(big: &[u8]) -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(
            LayerBuilder::new()
                .dir("etc", 0o755)
                .file("etc/os-release", b"ID=cvmd-test\n", 0o644)
                .file("etc/shadow", b"root:*:1::::::\n", 0o600)
                .dir("usr", 0o755)
                .dir("usr/bin", 0o755)
                .file("usr/bin/big", big, 0o755)
                .hardlink("usr/bin/big-alias", "usr/bin/big")
                .symlink("bin", "usr/bin")
                .dir("dev", 0o755)
                .char_device("dev/null", 1, 3, 0o666)
                .block_device("dev/loop0", 7, 0, 0o660)
                .dir("run", 0o755)
                .fifo("run/initctl", 0o600)
                .dir("var", 0o755)
                .dir("var/cache", 0o755)
                .file("var/cache/old", b"old", 0o644)
                .owner(1000, 100)
                .dir("home", 0o755)
                .file_with_xattrs("home/notes", b"hi", 0o640, &[("user.lang", b"en")])
                .build(Compression::Gzip),
        )
        .layer(
            LayerBuilder::new()
                .whiteout("etc/shadow")
                .opaque("var/cache")
                .file("var/cache/new", b"new", 0o644)
                .file("etc/motd", b"hello\n", 0o644)
                .build(Compression::Zstd),
        )
        .build()
}

fn rootfs_tree(cvmd: &CvmdOnCache, state: &Path, reference: &str, dir: &Path) -> Tree {
    let args = [
        "rootfs",
        reference,
        dir.to_str().unwrap(),
        "--json",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    assert_success(&cvmd.run(&args), "cvmd rootfs");
    let tree = snapshot(dir, Xattrs::NoOverlay);
    let unmount = [
        "rootfs",
        "--unmount",
        dir.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    assert_success(&cvmd.run(&unmount), "cvmd rootfs --unmount");
    tree
}

type Tree = std::collections::BTreeMap<String, Node>;

/// The rootfs tree of `reference`, pulled into a cache of its own.
fn tree_on_a_fresh_cache(reg: &Registry, reference: &str) -> Tree {
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let work = tempfile::tempdir().unwrap();
    rootfs_tree(
        &cvmd,
        &work.path().join("state"),
        reference,
        &work.path().join("root"),
    )
}

#[test]
fn convert_writes_an_estargz_copy_whose_full_pull_is_the_same_tree() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(300 << 10, 7);
    let source = push(&reg, "convert/src", "v1", &image(&big));
    let target = format!("{}/convert/dst:v1", reg.host());

    let original = tree_on_a_fresh_cache(&reg, &source);

    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd.run(&[
        "convert",
        &source,
        &target,
        "--chunk-size",
        "65536",
        "--prefetch",
        "/etc/os-release",
        "--prefetch",
        "usr/bin/big",
    ]);
    assert_success(&out, "cvmd convert");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "one line per layer and the result:\n{stdout}"
    );
    assert!(lines[0].starts_with("layer 1/2 (sha256:"), "{stdout}");
    assert!(
        lines[2].starts_with(&format!("{target}@sha256:")),
        "{stdout}"
    );

    // Each layer of the copy: annotated, with a footer, a TOC of that
    // digest, and the big file in chunks.
    let client = reg.client();
    let (status, _, manifest) = crate::common::block_on(client.get_manifest(
        "convert/dst",
        "v1",
        Some("application/vnd.oci.image.manifest.v1+json"),
    ))
    .unwrap();
    assert_eq!(status, 200);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "layer {i}: zstd became gzip"
        );
        let toc_digest: cvmd::digest::Digest = layer["annotations"][TOC_DIGEST_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("layer {i} lacks the TOC digest annotation"))
            .parse()
            .unwrap();
        let digest = layer["digest"].as_str().unwrap();
        let tar_size: u64 = layer["annotations"][estargz::UNCOMPRESSED_SIZE_ANNOTATION]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("layer {i} lacks the uncompressed size annotation"));
        let blob = crate::common::block_on(client.get_blob("convert/dst", digest)).unwrap();
        let toc_offset = estargz::parse_footer(&blob, blob.len() as u64).unwrap();
        let member = &blob[usize::try_from(toc_offset).unwrap()..blob.len() - 51];
        let (index, _) =
            estargz::read_toc(member, toc_offset, Some(&toc_digest), &TocLimits::default())
                .unwrap();
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(&blob[..]),
            &mut inflated,
        )
        .unwrap();
        assert_eq!(inflated.len() as u64, tar_size, "layer {i}");
        let first: Option<Vec<String>> = index
            .prefetch_entries()
            .map(|e| e.map(|e| e.path.clone()).collect());
        if i == 0 {
            assert_eq!(first.unwrap(), ["etc/os-release", "usr/bin/big"]);
        } else {
            assert_eq!(first, None, "layer 2 has none of the prefetch files");
            assert!(index.get(estargz::NO_PREFETCH_LANDMARK).is_some());
        }
        if i == 0 {
            let EntryKind::File { chunks, .. } = &index.get("usr/bin/big").unwrap().kind else {
                panic!("usr/bin/big is not a file in the TOC")
            };
            assert_eq!(chunks.len(), 5, "300 KiB in 64 KiB chunks");
        }
    }

    let work = tempfile::tempdir().unwrap();
    let converted = rootfs_tree(
        &cvmd,
        &work.path().join("state"),
        &target,
        &work.path().join("root"),
    );
    assert!(converted.contains_key("usr/bin/big") && !converted.contains_key("etc/shadow"));
    assert_same_tree("eStargz copy against the original", &converted, &original);
}

#[test]
fn convert_writes_a_zstd_chunked_copy_whose_full_pull_is_the_same_tree() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(300 << 10, 8);
    let source = push(&reg, "convert/src", "v1", &image(&big));
    let target = format!("{}/convert/zstd:v1", reg.host());
    let original = tree_on_a_fresh_cache(&reg, &source);

    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let refused = cvmd.run(&[
        "convert",
        &source,
        &target,
        "--format",
        "zstd:chunked",
        "--prefetch",
        "etc/os-release",
    ]);
    assert!(
        !refused.status.success(),
        "--prefetch taken for zstd:chunked"
    );
    let out = cvmd.run(&[
        "convert",
        &source,
        &target,
        "--format",
        "zstd:chunked",
        "--chunk-size",
        "65536",
    ]);
    assert_success(&out, "cvmd convert --format zstd:chunked");

    // Each layer: zstd, annotated; the TOC at its annotated position has
    // the annotated checksum; the blob decompresses (TOC and footer frames
    // skipped) to the config's diff_id.
    let client = reg.client();
    let (_, _, manifest) = crate::common::block_on(client.get_manifest(
        "convert/zstd",
        "v1",
        Some("application/vnd.oci.image.manifest.v1+json"),
    ))
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = crate::common::block_on(client.get_blob("convert/zstd", config_digest)).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "layer {i}"
        );
        assert!(layer["annotations"].get(TOC_DIGEST_ANNOTATION).is_none());
        let annotations: std::collections::HashMap<String, String> =
            serde_json::from_value(layer["annotations"].clone()).unwrap();
        let promised = zstd_chunked::annotated(Some(&annotations))
            .unwrap()
            .unwrap_or_else(|| panic!("layer {i} lacks the zstd:chunked annotations"));
        let position = promised.position.expect("a position annotation");
        let blob = crate::common::block_on(
            client.get_blob("convert/zstd", layer["digest"].as_str().unwrap()),
        )
        .unwrap();
        let limits = TocLimits::default();
        assert_eq!(
            zstd_chunked::parse_footer(&blob, blob.len() as u64, &limits).unwrap(),
            position,
            "layer {i}: the footer and the annotation agree"
        );
        let at = usize::try_from(position.offset).unwrap();
        let len = usize::try_from(position.compressed_len).unwrap();
        let index =
            zstd_chunked::read_toc(&blob[at..at + len], &position, &promised.checksum, &limits)
                .unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut zstd::stream::read::Decoder::new(&blob[..]).unwrap(),
            &mut tar,
        )
        .unwrap();
        assert_eq!(
            cvmd::digest::Digest::of(&tar).to_string(),
            config["rootfs"]["diff_ids"][i],
            "layer {i}: the decompressed blob is the diff_id's tar"
        );
        assert!(index.get(estargz::NO_PREFETCH_LANDMARK).is_none());
        if i == 0 {
            let EntryKind::File { chunks, .. } = &index.get("usr/bin/big").unwrap().kind else {
                panic!("usr/bin/big is not a file in the TOC")
            };
            assert_eq!(chunks.len(), 5, "300 KiB in 64 KiB chunks");
        }
    }

    let work = tempfile::tempdir().unwrap();
    let converted = rootfs_tree(
        &cvmd,
        &work.path().join("state"),
        &target,
        &work.path().join("root"),
    );
    assert_same_tree(
        "zstd:chunked copy against the original",
        &converted,
        &original,
    );
}

/// Docker's schema 2 has no zstd layer: its zstd:chunked copy is an OCI
/// image.
#[test]
fn convert_to_zstd_chunked_makes_a_docker_image_an_oci_one() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let img = ImageBuilder::new(Format::Docker)
        .layer(
            LayerBuilder::new()
                .file("f", &pseudo_random(16 << 10, 4), 0o644)
                .build(Compression::Gzip),
        )
        .build();
    let source = push(&reg, "convert/docker", "v1", &img);
    let target = format!("{}/convert/docker-zstd:v1", reg.host());
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd.run(&["convert", &source, &target, "--format", "zstd:chunked"]);
    assert_success(&out, "cvmd convert --format zstd:chunked");
    let (status, media_type, manifest) = crate::common::block_on(reg.client().get_manifest(
        "convert/docker-zstd",
        "v1",
        Some("application/vnd.oci.image.manifest.v1+json"),
    ))
    .unwrap();
    assert_eq!(
        (status, media_type.as_str()),
        (200, "application/vnd.oci.image.manifest.v1+json")
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

/// A token-auth registry: with credentials the push gets its own
/// `pull,push` token; anonymously (the source public) the push is refused
/// in one line that names the push scope, and the password is never shown.
#[test]
fn convert_pushes_with_a_push_token_and_says_when_it_has_none() {
    use crate::common::cli::SealedCvmd;
    use crate::common::token::TokenConfig;
    const USER: &str = "alice";
    const PASS: &str = "pw-Convert-never-shown";
    require!(crate::common::prereq::registry());
    let reg = Registry::token(TokenConfig::new().user(USER, PASS).public_repo("team/src"))
        .expect("registry");
    let img = ImageBuilder::new(Format::Docker)
        .layer(
            LayerBuilder::new()
                .file("f", &pseudo_random(16 << 10, 3), 0o644)
                .build(Compression::Gzip),
        )
        .build();
    let source = push(&reg, "team/src", "v1", &img);
    let target = format!("{}/team/dst:v1", reg.host());
    let insecure = ["--insecure-registries", &reg.host()];

    let anonymous = SealedCvmd::new();
    let mut args = vec!["convert", source.as_str(), target.as_str()];
    args.extend_from_slice(&insecure);
    let line = anonymous.run(&args).error_line();
    assert!(
        line.contains("repository:team/dst:pull,push"),
        "the refusal names the push scope: {line}"
    );

    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(
        &serde_json::json!({"auths": {reg.host(): {"username": USER, "password": PASS}}}),
    );
    let run = cvmd.run(&args);
    run.assert_ok();
    run.assert_never_shows(PASS);
    assert!(
        run.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("{target}@sha256:")),
        "{run}"
    );
    // Docker media types stay Docker's, the layer gzip.
    let (status, media_type, _) = crate::common::block_on(reg.client().get_manifest(
        "team/dst",
        "v1",
        Some("application/vnd.docker.distribution.manifest.v2+json"),
    ))
    .unwrap();
    assert_eq!(
        (status, media_type.as_str()),
        (200, "application/vnd.docker.distribution.manifest.v2+json")
    );
}
