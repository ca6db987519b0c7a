//! `cvmd pull` of each kind of manifest and layer compression the registry
//! serves, digest-pinned references, and the `--json` event stream.

use crate::common::cli::{small_image, SealedCvmd};
use crate::common::image::{
    Compression, Format, Image, ImageBuilder, IndexBuilder, Layer, LayerBuilder, Platform,
    DOCKER_LAYER_GZIP, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
};
use crate::common::prereq;
use crate::common::proxy::FaultProxy;
use crate::common::registry::push;
use crate::common::{block_on, Registry};
use std::sync::{Arc, Mutex};

fn image_of(format: Format, platform: Platform, layers: Vec<Layer>) -> Image {
    let mut b = ImageBuilder::new(format).platform(platform);
    for l in layers {
        b = b.layer(l);
    }
    b.build()
}

fn file_layer(name: &str, seed: u64, c: Compression) -> Layer {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file(
            &format!("etc/{name}"),
            &crate::common::image::pseudo_random(12 << 10, seed),
            0o644,
        )
        .build(c)
}

/// Pushes `img` as `repo:v1`, pulls it and checks output and store.
fn pull_and_check(reg: &Registry, repo: &str, img: &Image) {
    push(reg, repo, "v1", img);
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &format!("{}/{repo}:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    run.assert_ok();
    assert_eq!(
        run.stdout,
        format!("{}/{repo}:v1@{}\n", reg.host(), img.manifest_digest)
    );
    cvmd.assert_stored(img, &img.manifest_digest);
}

#[test]
fn oci_manifest() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = image_of(
        Format::Oci,
        Platform::linux_amd64(),
        vec![
            file_layer("a", 1, Compression::Gzip),
            file_layer("b", 2, Compression::Gzip),
        ],
    );
    assert!(img
        .manifest
        .windows(OCI_LAYER_GZIP.len())
        .any(|w| w == OCI_LAYER_GZIP.as_bytes()));
    pull_and_check(&reg, "kinds/oci", &img);
}

#[test]
fn docker_schema2_manifest() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = image_of(
        Format::Docker,
        Platform::linux_amd64(),
        vec![
            file_layer("a", 3, Compression::Gzip),
            file_layer("b", 4, Compression::Gzip),
        ],
    );
    assert!(img
        .manifest
        .windows(DOCKER_LAYER_GZIP.len())
        .any(|w| w == DOCKER_LAYER_GZIP.as_bytes()));
    pull_and_check(&reg, "kinds/docker", &img);
}

#[test]
fn zstd_multi_member_gzip_and_uncompressed_layers() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = image_of(
        Format::Oci,
        Platform::linux_amd64(),
        vec![
            file_layer("zstd", 5, Compression::Zstd),
            file_layer("multi", 6, Compression::MultiGzip),
            file_layer("plain", 7, Compression::None),
        ],
    );
    let text = String::from_utf8_lossy(&img.manifest).into_owned();
    assert!(text.contains(OCI_LAYER_ZSTD) && text.contains(&format!("\"{OCI_LAYER}\"")));
    pull_and_check(&reg, "kinds/compressions", &img);
}

/// Pushes an index of amd64 and arm64/v8 images and pulls each platform.
fn index_pulls(format: Format, repo: &str) {
    let reg = Registry::plain().unwrap();
    let h = reg.host();
    let amd64 = image_of(
        format,
        Platform::linux_amd64(),
        vec![file_layer("amd64", 10, Compression::Gzip)],
    );
    let arm64 = image_of(
        format,
        Platform::new("linux", "arm64", Some("v8")),
        vec![file_layer("arm64", 11, Compression::Gzip)],
    );
    let index = IndexBuilder::new(format)
        .image(amd64.clone())
        .image(arm64.clone())
        .build();
    let c = reg.client();
    block_on(c.push_index(repo, "v1", &index)).unwrap();
    let image = format!("{h}/{repo}:v1");
    for (platform, want) in [("linux/amd64", &amd64), ("linux/arm64", &arm64)] {
        let cvmd = SealedCvmd::new();
        let run = cvmd.pull(
            &image,
            &["--insecure-registries", &h, "--platform", platform],
        );
        run.assert_ok();
        assert_eq!(
            run.stdout,
            format!("{image}@{}\n", want.manifest_digest),
            "{platform}"
        );
        cvmd.assert_stored(want, &want.manifest_digest);
        assert!(cvmd.has_blob(&index.digest), "the index is stored too");
        let other = if std::ptr::eq(want, &amd64) {
            &arm64
        } else {
            &amd64
        };
        assert!(
            !cvmd.has_blob(&other.layers[0].digest),
            "{platform}: other platform's layer fetched"
        );
    }
}

#[test]
fn oci_index_selects_the_platform() {
    require!(prereq::registry());
    index_pulls(Format::Oci, "kinds/oci-index");
}

#[test]
fn docker_manifest_list_selects_the_platform() {
    require!(prereq::registry());
    index_pulls(Format::Docker, "kinds/docker-list");
}

#[test]
fn digest_pinned_reference_wins_over_the_tag() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let h = reg.host();
    let old = small_image(Format::Oci, 20);
    let new = small_image(Format::Oci, 30);
    push(&reg, "kinds/pinned", "v1", &old);
    // The tag moves on; the pinned reference still gets the old image.
    push(&reg, "kinds/pinned", "v1", &new);
    let cvmd = SealedCvmd::new();
    let pinned = format!("{h}/kinds/pinned:v1@{}", old.manifest_digest);
    let run = cvmd.pull(&pinned, &["--insecure-registries", &h]);
    run.assert_ok();
    assert_eq!(run.stdout, format!("{pinned}\n"));
    cvmd.assert_stored(&old, &old.manifest_digest);
    assert!(!cvmd.has_blob(&new.manifest_digest));

    let bare = format!("{h}/kinds/pinned@{}", old.manifest_digest);
    let run = SealedCvmd::new().pull(&bare, &["--insecure-registries", &h]);
    run.assert_ok();
    assert_eq!(run.stdout, format!("{bare}\n"));
}

#[test]
fn json_output_is_one_event_per_line_ending_with_done() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let h = reg.host();
    let img = small_image(Format::Oci, 40);
    push(&reg, "kinds/json", "v1", &img);
    let cvmd = SealedCvmd::new();
    let image = format!("{h}/kinds/json:v1");
    let run = cvmd.pull(&image, &["--insecure-registries", &h, "--json"]);
    run.assert_ok();
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"resolved"), "{kinds:?}");
    assert_eq!(events[0]["digest"], img.manifest_digest.as_str());
    assert_eq!(events[0]["layers"], 2);
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{kinds:?}");
    assert_eq!(done["digest"], img.manifest_digest.as_str());
    assert_eq!(done["reference"], image.as_str());
    assert_eq!(kinds.iter().filter(|k| **k == "done").count(), 1);
    for d in img.layer_digests() {
        let layer_done: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "layer_done" && e["digest"] == d.as_str())
            .collect();
        assert_eq!(layer_done.len(), 1, "{d}: {kinds:?}");
        assert_eq!(layer_done[0]["cached"], false);
    }
    cvmd.assert_stored(&img, &img.manifest_digest);

    // Again into the same store: every layer is reported cached.
    let run = cvmd.pull(&image, &["--insecure-registries", &h, "--json"]);
    run.assert_ok();
    let cached = run
        .stdout
        .lines()
        .filter(|l| l.contains("\"layer_done\"") && l.contains("\"cached\":true"))
        .count();
    assert_eq!(cached, 2, "{run}");
}

/// Records every event the library reports.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<cvmd::pull::PullEvent>>>);

impl cvmd::pull::ProgressSink for Recorder {
    fn event(&self, event: cvmd::pull::PullEvent) {
        self.0.lock().unwrap().push(event);
    }
}

#[test]
fn library_puller_fetches_each_blob_once_per_store() {
    use cvmd::pull::{PullEvent, Puller};
    use cvmd::registry::{ClientOptions, Reference, RegistryClient};
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&reg.url());
    let img = small_image(Format::Docker, 50);
    push(&reg, "kinds/lib", "v1", &img);
    let cache = tempfile::tempdir().unwrap();
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: vec![proxy.host()],
        ..Default::default()
    })
    .unwrap();
    let puller = Puller {
        client: Arc::new(client),
        store: cvmd::store::ContentStore::open(cache.path()).unwrap(),
        layers: cvmd::store::layers::LayerCache::open(cache.path()).unwrap(),
        max_layer_bytes: 0,
        max_image_bytes: 0,
        cache_reserve: None,
        preserve_ownership: true,
        unpack: true,
        platform: "linux/amd64".parse().unwrap(),
        concurrency: 2,
        bandwidth: None,
    };
    let reference: Reference = format!("{}/kinds/lib:v1", proxy.host()).parse().unwrap();
    for round in 0..2 {
        let rec = Recorder::default();
        // On a multi-thread runtime: the pull's future must be Send.
        let pulled = crate::common::block_on(puller.pull(&reference, &rec)).unwrap();
        assert_eq!(pulled.manifest_digest.to_string(), img.manifest_digest);
        assert_eq!(pulled.manifest.layers.len(), 2);
        let events = rec.0.lock().unwrap();
        let cached: Vec<bool> = events
            .iter()
            .filter_map(|e| match e {
                PullEvent::LayerDone { cached, .. } => Some(*cached),
                _ => None,
            })
            .collect();
        assert_eq!(cached, [round == 1, round == 1], "round {round}");
        assert!(matches!(events.last(), Some(PullEvent::Done { .. })));
    }
    for d in img.layer_digests().iter().chain([&img.config_digest]) {
        assert_eq!(proxy.blob_gets(d), 1, "{d}");
        let data = std::fs::read(crate::common::cli::blob_path(cache.path(), d)).unwrap();
        assert_eq!(&crate::common::sha256_digest(&data), d);
    }
}
