//! A `cvmd pull` killed with SIGKILL in the middle of unpacking a layer
//! leaves nothing published, and the next pull redoes the layer from
//! scratch and gets it whole.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use std::time::{Duration, Instant};

use crate::common::image::{Compression, Format, ImageBuilder, Layer, LayerBuilder};
use crate::common::layers::*;
use crate::common::proxy::FaultProxy;
use crate::common::{wait_until, Registry};

/// Enough that unpacking takes a while (seconds in a debug build), few
/// enough to keep the suite quick.
const FILES: usize = 5_000;

fn content(i: usize) -> Vec<u8> {
    format!("file {i} of the many-files layer\n").into_bytes()
}

fn many_files() -> Layer {
    let mut b = LayerBuilder::new();
    for d in 0..FILES / 1000 {
        b = b.dir(&format!("d{d:02}"), 0o755);
        for i in d * 1000..(d + 1) * 1000 {
            b = b.file(&format!("d{d:02}/f{i:05}"), &content(i), 0o644);
        }
    }
    b.build(Compression::Zstd)
}

#[test]
fn layers_crash_mid_unpack_is_redone_on_the_next_pull() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&reg.url());
    let small = LayerBuilder::new()
        .file("etc/os-release", b"ID=test\n", 0o644)
        .build(Compression::Gzip);
    let big = many_files();
    let img = ImageBuilder::new(Format::Oci)
        .layer(small.clone())
        .layer(big.clone())
        .build();
    push(&reg, "crash/many", "v1", &img);
    let reference = format!("{}/crash/many:v1", proxy.host());
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let cvmd = CvmdOnCache::new(&cache, &proxy.host());

    // Slow enough that the unpack is seconds from done when we kill it.
    proxy.throttle_blobs((big.size / 10).max(1));
    let mut child = cvmd
        .command(&["pull", &reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cvmd pull");
    let big_staging = cache.join("layers/staging").join(format!(
        "{}.{}",
        big.diff_id.strip_prefix("sha256:").unwrap(),
        child.id()
    ));
    let started = wait_until(Duration::from_secs(20), || {
        dir_names(&big_staging.join("root")).len() >= 2
    });
    child.kill().expect("SIGKILL cvmd");
    let status = child.wait().unwrap();
    assert!(started, "the unpack never started ({status})");
    assert!(!status.success());

    let big_dir = layer_dir(&cache, &big.diff_id);
    assert!(!big_dir.exists(), "a half-unpacked layer was published");
    assert!(
        staging(&cache)
            .iter()
            .any(|s| s.starts_with(big.diff_id.strip_prefix("sha256:").unwrap())),
        "the killed unpack should have left its staging dir: {:?}",
        staging(&cache)
    );
    assert!(dir_names(&cache.join("images")).is_empty());

    proxy.throttle_blobs(0);
    let t = Instant::now();
    let out = cvmd.pull(&reference, &["--json"]);
    assert_success(&out, "second pull");
    eprintln!("second pull took {:?}", t.elapsed());
    let done: Vec<_> = events(&out)
        .into_iter()
        .filter(|e| e["event"] == "layer_done" && e["digest"] == big.digest.as_str())
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["cached"], false, "the big layer is unpacked again");

    assert!(big_dir.join("layer.json").is_file());
    assert!(
        staging(&cache).is_empty(),
        "leftovers: {:?}",
        staging(&cache)
    );
    let root = big_dir.join("root");
    let mut files = 0;
    for d in dir_names(&root) {
        for f in dir_names(&root.join(&d)) {
            let i: usize = f.trim_start_matches('f').parse().unwrap();
            assert_eq!(std::fs::read(root.join(&d).join(&f)).unwrap(), content(i));
            files += 1;
        }
    }
    assert_eq!(files, FILES);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(big_dir.join("layer.json")).unwrap()).unwrap();
    assert_eq!(meta["entries"], (FILES + FILES / 1000) as u64);
    sandbox.assert_outside_untouched();
}
