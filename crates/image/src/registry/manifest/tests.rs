use super::*;
use oci_spec::image::Digest as OciDigest;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn manifest(mt: &str, layer_mt: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":10}},"layers":[{{"mediaType":"{layer_mt}","digest":"{D2}","size":20}}]}}"#
    )
}

#[test]
fn oci_and_docker_manifests_parse() {
    let m = parse(
        manifest(OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar+zstd").as_bytes(),
        Some(OCI_MANIFEST),
        "x",
    )
    .unwrap();
    let Manifest::Image(m) = m else { panic!() };
    assert_eq!(m.layers[0].compression, Compression::Zstd);
    let m = parse(
        manifest(
            DOCKER_MANIFEST,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
        .as_bytes(),
        None,
        "x",
    )
    .unwrap();
    assert!(
        matches!(m, Manifest::Image(ImageManifest { ref layers, .. }) if layers[0].compression == Compression::Gzip)
    );
}

#[test]
fn unsupported_media_types_are_named() {
    let e = parse(
        manifest(
            OCI_MANIFEST,
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        )
        .as_bytes(),
        None,
        "img",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("encrypted layers are not supported"),
        "{e}"
    );
    let e = parse(
        br#"{"schemaVersion":1,"name":"x"}"#,
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        "img",
    )
    .unwrap_err();
    assert!(e.to_string().contains("schema 1"), "{e}");
    let e = parse(b"{}", Some("application/vnd.example.thing"), "img").unwrap_err();
    assert!(
        matches!(e, RegistryError::UnsupportedMediaType { .. }),
        "{e}"
    );
}

#[test]
fn content_type_and_body_must_agree() {
    let e = parse(
        manifest(DOCKER_MANIFEST, "application/vnd.oci.image.layer.v1.tar").as_bytes(),
        Some(OCI_MANIFEST),
        "x",
    )
    .unwrap_err();
    assert!(e.to_string().contains("but mediaType"), "{e}");
}

fn entry(p: &str) -> Descriptor {
    let mut d = OciDescriptor::new(
        MediaType::ImageManifest,
        1,
        D1.parse::<OciDigest>().unwrap(),
    );
    d.set_platform(Some(OciPlatform::clone(&p.parse::<Platform>().unwrap())));
    Descriptor::from_oci(d, "x").unwrap()
}

#[test]
fn platform_selection_prefers_exact_variant() {
    let entries = vec![
        entry("linux/arm/v6"),
        entry("linux/arm/v7"),
        entry("linux/amd64"),
        entry("linux/arm64/v8"),
    ];
    let pick = |p: &str| {
        select_platform(&entries, &p.parse().unwrap(), "r")
            .unwrap()
            .platform()
            .map(platform_text)
            .unwrap()
    };
    assert_eq!(pick("linux/arm/v7"), "linux/arm/v7");
    assert_eq!(pick("linux/amd64"), "linux/amd64");
    assert_eq!(pick("linux/arm64"), "linux/arm64/v8");
    let e = select_platform(&entries, &"linux/s390x".parse().unwrap(), "r")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux/s390x")
            && e.contains("linux/arm/v6, linux/arm/v7, linux/amd64, linux/arm64/v8"),
        "{e}"
    );
}

#[test]
fn index_entries_without_media_type_are_read_and_selected() {
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    );
    let Manifest::Index(entries) = parse(index.as_bytes(), Some(OCI_INDEX), "x").unwrap() else {
        panic!("not an index")
    };
    let entry = select_platform(&entries, &"linux/amd64".parse().unwrap(), "x").unwrap();
    assert_eq!(
        (entry.media_type(), entry.digest.to_string()),
        (None, D1.to_string())
    );
    // With no type said, the document fetched decides its kind.
    let child = manifest(DOCKER_MANIFEST, DOCKER_LAYER_GZIP);
    let content_type = entry.media_type().map(AsRef::as_ref);
    assert!(matches!(
        parse(child.as_bytes(), content_type, "x").unwrap(),
        Manifest::Image(ImageManifest { ref media_type, .. }) if media_type == DOCKER_MANIFEST
    ));
}

#[test]
fn layer_annotations_are_readable() {
    let toc = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":20,"annotations":{{"containerd.io/snapshot/stargz/toc.digest":"{toc}"}}}}]}}"#
    );
    let Manifest::Image(m) = parse(m.as_bytes(), None, "x").unwrap() else {
        panic!("not an image manifest")
    };
    assert_eq!(
        m.layers[0]
            .annotations
            .get("containerd.io/snapshot/stargz/toc.digest")
            .map(String::as_str),
        Some(toc)
    );
}

#[test]
fn digests_other_than_sha256_are_refused() {
    let sha512 = format!("sha512:{}", "4".repeat(128));
    let m = manifest(OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar").replace(D2, &sha512);
    let e = parse(m.as_bytes(), None, "img").unwrap_err().to_string();
    assert!(
        e.starts_with("invalid img: descriptor sha512:")
            && e.contains("is not supported (only sha256)"),
        "{e}"
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{sha512}","size":1}}]}}"#
    );
    let e = parse(index.as_bytes(), None, "img")
        .unwrap_err()
        .to_string();
    assert!(e.contains("only sha256"), "{e}");
}

#[test]
fn limits_are_checked_before_parsing() {
    let layer = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D2}","size":1}}"#
    );
    let layers = vec![layer; MAX_LAYERS + 1].join(",");
    let m = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D1}","size":1}},"layers":[{layers}]}}"#
    );
    let e = parse(m.as_bytes(), Some(OCI_MANIFEST), "img").unwrap_err();
    assert_eq!(e.to_string(), "invalid img: 1025 layers (at most 1024)");
    let entries = vec!["{}"; MAX_INDEX_ENTRIES + 1].join(",");
    let index = format!(r#"{{"schemaVersion":2,"manifests":[{entries}]}}"#);
    let e = parse(index.as_bytes(), Some(DOCKER_LIST), "img").unwrap_err();
    assert_eq!(e.to_string(), "invalid img: 4097 index entries");
    for (body, ct) in [
        (
            manifest(OCI_MANIFEST, "application/vnd.oci.image.layer.v1.tar"),
            OCI_MANIFEST,
        ),
        (
            r#"{"schemaVersion":3,"manifests":[]}"#.to_string(),
            OCI_INDEX,
        ),
    ] {
        let body = body.replace(r#""schemaVersion":2"#, r#""schemaVersion":3"#);
        let e = parse(body.as_bytes(), Some(ct), "img").unwrap_err();
        assert_eq!(e.to_string(), "invalid img: schemaVersion 3 (expected 2)");
    }
    let e = parse(br#"{"manifests":[]}"#, Some(OCI_INDEX), "img").unwrap_err();
    assert!(
        e.to_string()
            .contains("bad index (missing field `schemaVersion`"),
        "{e}"
    );
}

#[test]
fn docker_lists_select_docker_manifests() {
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
    );
    let Manifest::Index(entries) = parse(index.as_bytes(), None, "x").unwrap() else {
        panic!("not an index")
    };
    let entry = select_platform(&entries, &"linux/arm64".parse().unwrap(), "x").unwrap();
    assert_eq!(entry.media_type().map(AsRef::as_ref), Some(DOCKER_MANIFEST));
    let m = manifest(DOCKER_MANIFEST, DOCKER_LAYER).replace(OCI_CONFIG, DOCKER_CONFIG);
    let Manifest::Image(m) = parse(m.as_bytes(), Some(DOCKER_MANIFEST), "x").unwrap() else {
        panic!("not an image manifest")
    };
    assert_eq!(
        (
            m.config.media_type().map(AsRef::as_ref),
            &m.layers[0].compression
        ),
        (Some(DOCKER_CONFIG), &Compression::None)
    );
}

#[test]
fn bad_platform_strings_are_refused() {
    for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64"] {
        assert!(bad.parse::<Platform>().is_err(), "{bad}");
    }
}
