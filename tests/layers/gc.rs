//! `cvmd gc` on a layer cache: keeps what image records name and what
//! leases hold, removes exactly the rest, drops least recently used images
//! first beyond a budget.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::common::image::{Compression, Format, Image, ImageBuilder, Layer, LayerBuilder};
use crate::common::layers::*;
use crate::common::Registry;
use cvmd::digest::Digest;
use cvmd::store::lease::Lease;

fn shared() -> Layer {
    LayerBuilder::new()
        .file("etc/os-release", b"ID=gc\n", 0o644)
        .build(Compression::Gzip)
}

/// An image of the shared layer and one of its own (`mb` MiB).
fn image(seed: u64, mb: usize) -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(shared())
        .layer(Layer::random("own.bin", mb, seed, Compression::Gzip))
        .build()
}

fn present(cache: &Path, l: &Layer) -> (bool, bool) {
    (
        layer_dir(cache, &l.diff_id).join("layer.json").is_file(),
        blob_path(cache, &l.digest).is_file(),
    )
}

fn set_last_use(cache: &Path, reference: &str, ago: Duration) {
    let (_, path) = image_record(cache, reference);
    std::fs::File::options()
        .append(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn layers_gc_removes_exactly_the_unreferenced_and_unleased() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let (a, b) = (image(1, 1), image(2, 1));
    let ref_a = push(&reg, "gc/a", "v1", &a);
    let ref_b = push(&reg, "gc/b", "v1", &b);
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let cvmd = CvmdOnCache::new(&cache, &reg.host());
    cvmd.pull_ok(&ref_a);
    cvmd.pull_ok(&ref_b);
    let all = [&a.layers[0], &a.layers[1], &b.layers[1]];

    // Both referenced: nothing goes.
    let report = cvmd.gc(&[]);
    assert_eq!(report["removed_layers"], 0, "{report}");
    assert_eq!(report["removed_blobs"], 0, "{report}");
    for l in all {
        assert_eq!(present(&cache, l), (true, true));
    }

    // b's record gone: exactly its own layer and blobs go.
    let (_, record_b) = image_record(&cache, &ref_b);
    std::fs::remove_file(&record_b).unwrap();
    let report = cvmd.gc(&[]);
    assert_eq!(report["removed_layers"], 1, "{report}");
    // Its layer blob, manifest and config.
    assert_eq!(report["removed_blobs"], 3, "{report}");
    assert_eq!(present(&cache, &b.layers[1]), (false, false));
    assert!(!blob_path(&cache, &b.manifest_digest).exists());
    assert!(!blob_path(&cache, &b.config_digest).exists());
    for l in &a.layers {
        assert_eq!(present(&cache, l), (true, true), "a's layers stay");
    }
    assert!(blob_path(&cache, &a.manifest_digest).is_file());
    assert!(blob_path(&cache, &a.config_digest).is_file());

    // A leased layer survives gc although no record names it.
    cvmd.pull_ok(&ref_b);
    let leased: Digest = b.layers[1].diff_id.parse().unwrap();
    let lease =
        crate::common::block_on(Lease::acquire(&cache, "ws-1", &ref_b, &[leased], None)).unwrap();
    let (_, record_b) = image_record(&cache, &ref_b);
    std::fs::remove_file(&record_b).unwrap();
    let report = cvmd.gc(&[]);
    assert_eq!(report["removed_layers"], 0, "{report}");
    assert_eq!(report["kept_in_use"], 1, "{report}");
    assert!(present(&cache, &b.layers[1]).0, "leased layer removed");

    // Released: now it goes.
    drop(lease);
    let report = cvmd.gc(&[]);
    assert_eq!(report["removed_layers"], 1, "{report}");
    assert!(!present(&cache, &b.layers[1]).0);
    assert_eq!(published(&cache).len(), 2);
    sandbox.assert_outside_untouched();
}

#[test]
fn layers_gc_budget_drops_least_recently_used_first() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let (a, b, c) = (image(3, 1), image(4, 1), image(5, 1));
    let refs = [
        push(&reg, "lru/a", "v1", &a),
        push(&reg, "lru/b", "v1", &b),
        push(&reg, "lru/c", "v1", &c),
    ];
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let cvmd = CvmdOnCache::new(&cache, &reg.host());
    for r in &refs {
        cvmd.pull_ok(r);
    }
    // Pulled a, b, c, but used b longest ago, then c, then a.
    set_last_use(&cache, &refs[1], Duration::from_secs(3 * 3600));
    set_last_use(&cache, &refs[2], Duration::from_secs(2 * 3600));
    set_last_use(&cache, &refs[0], Duration::from_secs(3600));

    let used = cvmd.gc(&[])["used_bytes"].as_u64().unwrap();
    // Just under: one image must go, the least recently used.
    let report = cvmd.gc(&["--budget", &(used - 1).to_string()]);
    assert_eq!(
        report["removed_images"],
        serde_json::json!([refs[1]]),
        "{report}"
    );
    assert_eq!(present(&cache, &b.layers[1]), (false, false));
    for img in [&a, &c] {
        for l in &img.layers {
            assert_eq!(present(&cache, l), (true, true));
        }
    }

    // Just under again: c goes next, a (most recent) stays.
    let used = cvmd.gc(&[])["used_bytes"].as_u64().unwrap();
    let report = cvmd.gc(&["--budget", &(used - 1).to_string()]);
    assert_eq!(
        report["removed_images"],
        serde_json::json!([refs[2]]),
        "{report}"
    );
    for l in &a.layers {
        assert_eq!(present(&cache, l), (true, true));
    }
    assert_eq!(present(&cache, &c.layers[1]), (false, false));
    assert_eq!(dir_names(&cache.join("images")).len(), 1);
}
