//! `cvmd pull` through a fault-injecting proxy (cvmd talks to
//! `proxy.host()` over plain HTTP): cuts resumed with Range, server errors
//! retried, corruption refused, a killed process resumed, concurrent pulls
//! sharing one download, and registry mirrors.

use crate::common::cli::{small_image, SealedCvmd};
use crate::common::image::{Compression, Format, Image, ImageBuilder, Layer};
use crate::common::prereq;
use crate::common::proxy::{Fault, FaultProxy};
use crate::common::registry::push;
use crate::common::{sha256_digest, wait_until, Registry};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A plain registry with `faults/app:v1` (one random layer of `mb` MiB)
/// behind a fault proxy.
fn setup(mb: usize, seed: u64) -> (Registry, FaultProxy, Image) {
    let reg = Registry::plain().unwrap();
    let img = ImageBuilder::new(Format::Oci)
        .layer(Layer::random("blob.bin", mb, seed, Compression::None))
        .build();
    push(&reg, "faults/app", "v1", &img);
    let proxy = FaultProxy::start(&reg.url());
    (reg, proxy, img)
}

fn image(proxy: &FaultProxy) -> String {
    format!("{}/faults/app:v1", proxy.host())
}

/// Puts the image's config in the store beforehand, so the layer's GETs are
/// the only blob GETs the proxy's knobs apply to.
fn seed_config(cvmd: &SealedCvmd, img: &Image) {
    let p = cvmd.blob_path(&img.config_digest);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, &img.config).unwrap();
}

/// The `Range` start of each GET of `digest`, in order (None: no Range).
fn range_starts(proxy: &FaultProxy, digest: &str) -> Vec<Option<u64>> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(digest))
        .map(|r| {
            r.range.as_deref().map(|v| {
                v.trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap()
            })
        })
        .collect()
}

#[test]
fn a_cut_mid_blob_is_resumed_with_a_range_request() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(4, 1);
    let layer = &img.layers[0].digest;
    let cvmd = SealedCvmd::new();
    seed_config(&cvmd, &img);
    proxy.cut_blob_after(MIB, 1);
    let run = cvmd.pull(&image(&proxy), &["--insecure-registries", &proxy.host()]);
    run.assert_ok();
    cvmd.assert_stored(&img, &img.manifest_digest);
    assert!(proxy.saw_range());
    let starts = range_starts(&proxy, layer);
    assert_eq!(starts.len(), 2, "{:?}", proxy.requests());
    assert_eq!(starts[0], None);
    let resumed = starts[1].expect("the second GET has a Range");
    assert!(resumed > 0 && resumed <= MIB, "resumed at {resumed}");
    let faults: Vec<_> = proxy.requests().iter().filter_map(|r| r.fault).collect();
    assert_eq!(faults, [Fault::Cut(MIB)]);
}

#[test]
fn server_errors_are_retried_then_the_pull_succeeds() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(1, 2);
    let layer = &img.layers[0].digest;
    let cvmd = SealedCvmd::new();
    seed_config(&cvmd, &img);
    proxy.fail_blob_gets_with(500, 2);
    let run = cvmd.pull(&image(&proxy), &["--insecure-registries", &proxy.host()]);
    run.assert_ok();
    cvmd.assert_stored(&img, &img.manifest_digest);
    assert_eq!(proxy.blob_gets(layer), 3);
    let statuses: Vec<u16> = proxy
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(layer.as_str()))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
}

#[test]
fn server_errors_past_the_retry_limit_fail_with_one_line() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(1, 3);
    let layer = &img.layers[0].digest;
    let cvmd = SealedCvmd::new();
    seed_config(&cvmd, &img);
    proxy.fail_blob_gets_with(503, 100);
    let h = proxy.host();
    let run = cvmd.pull(
        &image(&proxy),
        &["--insecure-registries", &h, "--pull-retries", "2"],
    );
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: registry {h} answered 503 for blob {layer} of {h}/faults/app:v1@{}: UNKNOWN injected by FaultProxy",
            img.manifest_digest
        )
    );
    assert!(!cvmd.has_blob(layer));
}

/// `--pull-retries` is "attempts per request": a layer GET that keeps
/// failing is retried by the registry client only, not again by the
/// puller's download loop (that made N attempts N*N requests).
#[test]
fn pull_retries_counts_attempts_per_request() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(1, 3);
    let layer = &img.layers[0].digest;
    let cvmd = SealedCvmd::new();
    seed_config(&cvmd, &img);
    proxy.fail_blob_gets_with(503, 100);
    let h = proxy.host();
    let run = cvmd.pull(
        &image(&proxy),
        &["--insecure-registries", &h, "--pull-retries", "2"],
    );
    run.error_line();
    assert_eq!(
        proxy.blob_gets(layer),
        2,
        "--pull-retries 2 is two attempts"
    );
}

#[test]
fn corrupted_bytes_are_refused_and_nothing_is_stored() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(1, 4);
    let h = proxy.host();
    let pinned = format!("{h}/faults/app:v1@{}", img.manifest_digest);
    let flipped = |data: &[u8]| {
        let mut d = data.to_vec();
        d[0] ^= 0xff;
        sha256_digest(&d)
    };

    // A layer.
    let layer = &img.layers[0];
    let cvmd = SealedCvmd::new();
    seed_config(&cvmd, &img);
    proxy.corrupt_blob_bytes(1);
    let run = cvmd.pull(&image(&proxy), &["--insecure-registries", &h]);
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: layer {} of {pinned}: content has digest {}, expected {}; nothing was stored",
            layer.digest,
            flipped(&layer.data),
            layer.digest
        )
    );
    assert!(!cvmd.has_blob(&layer.digest));
    assert!(cvmd.partials().is_empty(), "{:?}", cvmd.partials());

    // The config.
    let cvmd = SealedCvmd::new();
    proxy.corrupt_blob_bytes(1);
    let run = cvmd.pull(&image(&proxy), &["--insecure-registries", &h]);
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: blob {} of {pinned}: the registry sent content with digest {}, expected {}; nothing was stored",
            img.config_digest,
            flipped(&img.config),
            img.config_digest
        )
    );
    assert!(!cvmd.has_blob(&img.config_digest));
    assert!(!cvmd.has_blob(&layer.digest));
}

#[test]
fn a_pull_killed_mid_download_is_resumed_by_the_next() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(6, 5);
    let layer = &img.layers[0].digest;
    let h = proxy.host();
    let cvmd = SealedCvmd::new();
    proxy.throttle_blobs(2 * MIB);
    let mut child = cvmd.spawn_pull(&image(&proxy), &["--insecure-registries", &h]);
    let started = wait_until(Duration::from_secs(20), || cvmd.partial_bytes() >= MIB);
    child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix.
    let status = child.wait().unwrap();
    assert!(started, "no partial download appeared");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!cvmd.has_blob(layer));
    let kept = cvmd.partial_bytes();
    assert!(kept >= MIB, "the partial was not kept: {kept}");

    proxy.throttle_blobs(0);
    let run = cvmd.pull(&image(&proxy), &["--insecure-registries", &h, "--json"]);
    run.assert_ok();
    cvmd.assert_stored(&img, &img.manifest_digest);
    let starts = range_starts(&proxy, layer);
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[1].is_some_and(|s| s >= MIB), "{starts:?}");
    let started: serde_json::Value = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "layer_started")
        .expect("layer_started event");
    assert!(
        started["resumed_from"].as_u64().unwrap() >= MIB,
        "{started}"
    );
}

#[test]
fn four_concurrent_pulls_download_each_layer_once() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = ImageBuilder::new(Format::Oci)
        .layer(Layer::random("a.bin", 2, 6, Compression::None))
        .layer(Layer::random("b.bin", 2, 7, Compression::Gzip))
        .build();
    push(&reg, "faults/app", "v1", &img);
    let proxy = FaultProxy::start(&reg.url());
    // Slow enough that all four are running while the layers download.
    proxy.throttle_blobs(4 * MIB);
    let h = proxy.host();
    let cvmd = SealedCvmd::new();
    let children: Vec<_> = (0..4)
        .map(|_| cvmd.spawn_pull(&image(&proxy), &["--insecure-registries", &h]))
        .collect();
    let runs: Vec<_> = children
        .into_iter()
        .map(|c| crate::common::cli::to_run(c.wait_with_output().unwrap()))
        .collect();
    for run in &runs {
        run.assert_ok();
        assert_eq!(
            run.stdout,
            format!("{}@{}\n", image(&proxy), img.manifest_digest)
        );
    }
    for d in img.layer_digests() {
        assert_eq!(proxy.blob_gets(&d), 1, "{d}: {:?}", proxy.requests());
    }
    cvmd.assert_stored(&img, &img.manifest_digest);
    let waited = runs
        .iter()
        .filter(|r| r.stderr.contains("another process is downloading it"))
        .count();
    assert!(waited > 0, "no pull waited for another's download");
}

#[test]
fn a_mirror_that_has_the_image_serves_it() {
    require!(prereq::registry());
    let origin = Registry::plain().unwrap();
    let mirror = Registry::plain().unwrap();
    let img = small_image(Format::Oci, 8);
    push(&origin, "faults/app", "v1", &img);
    push(&mirror, "faults/app", "v1", &img);
    let origin_proxy = FaultProxy::start(&origin.url());
    let mirror_proxy = FaultProxy::start(&mirror.url());
    let (o, m) = (origin_proxy.host(), mirror_proxy.host());
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &image(&origin_proxy),
        &[
            "--insecure-registries",
            &format!("{o},{m}"),
            "--mirrors",
            &format!("{o}={m}"),
        ],
    );
    run.assert_ok();
    assert_eq!(
        run.stdout,
        format!("{o}/faults/app:v1@{}\n", img.manifest_digest)
    );
    cvmd.assert_stored(&img, &img.manifest_digest);
    assert!(
        origin_proxy.requests().is_empty(),
        "{:?}",
        origin_proxy.requests()
    );
    for d in img.layer_digests() {
        assert_eq!(mirror_proxy.blob_gets(&d), 1, "{d}");
    }
}

#[test]
fn a_mirror_that_is_down_falls_back_to_the_origin() {
    require!(prereq::registry());
    let (_reg, proxy, img) = setup(1, 9);
    let o = proxy.host();
    let dead = format!("127.0.0.1:{}", crate::common::free_port());
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &image(&proxy),
        &[
            "--insecure-registries",
            &format!("{o},{dead}"),
            "--mirrors",
            &format!("{o}={dead}"),
            "--pull-retries",
            "2",
        ],
    );
    run.assert_ok();
    assert_eq!(
        run.stdout,
        format!("{o}/faults/app:v1@{}\n", img.manifest_digest)
    );
    cvmd.assert_stored(&img, &img.manifest_digest);
    assert_eq!(proxy.blob_gets(&img.layers[0].digest), 1);
    assert_eq!(proxy.blob_gets(&img.config_digest), 1);
}

/// `--pull-bandwidth` holds a pull's layers, together, to the rate: two
/// layers of 1.5 MiB at 1 MiB/s take at least about 2.5 s (the first
/// tenth of a second's worth passes at once), where the proxy alone
/// serves them at 64 MiB/s; and every byte still arrives, checked.
#[test]
fn pull_bandwidth_caps_the_layers_together() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = ImageBuilder::new(Format::Oci)
        .layer(Layer::random("a.bin", 1, 8, Compression::None))
        .layer(Layer::random("b.bin", 2, 9, Compression::None))
        .build();
    push(&reg, "faults/app", "v1", &img);
    let proxy = FaultProxy::start(&reg.url());
    proxy.throttle_blobs(64 * MIB);
    let h = proxy.host();
    let cvmd = SealedCvmd::new();
    let started = std::time::Instant::now();
    cvmd.pull(
        &image(&proxy),
        &["--insecure-registries", &h, "--pull-bandwidth", "1MiB"],
    )
    .assert_ok();
    let took = started.elapsed();
    cvmd.assert_stored(&img, &img.manifest_digest);
    let bytes: u64 = img.layers.iter().map(|l| l.size).sum();
    assert!(bytes > 3 * MIB, "{bytes}");
    // The cap is a floor on the time: (bytes - one burst) / rate.
    let floor = Duration::from_secs_f64((bytes - MIB / 10) as f64 / MIB as f64 * 0.95);
    assert!(
        took >= floor,
        "{bytes} bytes in {took:?} under a 1 MiB/s cap"
    );
}
