//! Layers shared between images and between concurrent pulls are fetched
//! and unpacked once per cache.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use crate::common::image::{Compression, Format, Image, ImageBuilder, Layer, LayerBuilder};
use crate::common::layers::*;
use crate::common::proxy::FaultProxy;
use crate::common::Registry;

fn base_layers() -> Vec<Layer> {
    vec![
        Layer::random("usr/lib/base.so", 1, 1, Compression::Gzip),
        LayerBuilder::new()
            .file("etc/os-release", b"ID=shared\n", 0o644)
            .whiteout("usr/lib/gone")
            .build(Compression::Zstd),
    ]
}

fn image_on_base(top: Layer) -> Image {
    let mut b = ImageBuilder::new(Format::Oci);
    for l in base_layers() {
        b = b.layer(l);
    }
    b.layer(top).build()
}

fn layer_done(events: &[serde_json::Value], digest: &str) -> Vec<bool> {
    events
        .iter()
        .filter(|e| e["event"] == "layer_done" && e["digest"] == digest)
        .map(|e| e["cached"].as_bool().expect("cached is a bool"))
        .collect()
}

#[test]
fn layers_shared_base_is_reused_not_fetched() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&reg.url());
    let a = image_on_base(Layer::random("app/a.bin", 1, 10, Compression::Gzip));
    let b = image_on_base(Layer::random("app/b.bin", 1, 11, Compression::Gzip));
    push(&reg, "share/a", "v1", &a);
    push(&reg, "share/b", "v1", &b);
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());

    let out = cvmd.pull(&format!("{}/share/a:v1", proxy.host()), &["--json"]);
    assert_success(&out, "pull a");
    let ev = events(&out);
    for l in &a.layers {
        assert_eq!(
            layer_done(&ev, &l.digest),
            [false],
            "first pull fetches all"
        );
        assert_eq!(proxy.blob_gets(&l.digest), 1);
    }

    proxy.clear_requests();
    let out = cvmd.pull(&format!("{}/share/b:v1", proxy.host()), &["--json"]);
    assert_success(&out, "pull b");
    let ev = events(&out);
    for l in &b.layers[..2] {
        assert_eq!(layer_done(&ev, &l.digest), [true], "shared layer is cached");
        assert_eq!(proxy.blob_gets(&l.digest), 0, "shared blob fetched again");
    }
    let top = &b.layers[2];
    assert_eq!(layer_done(&ev, &top.digest), [false]);
    assert_eq!(proxy.blob_gets(&top.digest), 1);
    assert_eq!(published(&sandbox.cache()).len(), 4);
    assert!(staging(&sandbox.cache()).is_empty());
}

#[test]
fn layers_concurrent_pulls_unpack_each_layer_once() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&reg.url());
    let img = image_on_base(Layer::random("app/c.bin", 2, 12, Compression::Gzip));
    push(&reg, "share/c", "v1", &img);
    let reference = format!("{}/share/c:v1", proxy.host());
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());

    // Slow blobs: all four pulls are started long before any layer is done.
    proxy.throttle_blobs(2 << 20);
    let children: Vec<_> = (0..4)
        .map(|_| {
            cvmd.command(&["pull", &reference, "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn cvmd pull")
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut all = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        assert_success(out, &format!("concurrent pull {i}"));
        all.extend(events(out));
    }
    for l in &img.layers {
        let done = layer_done(&all, &l.digest);
        assert_eq!(done.len(), 4, "every pull reports {}", l.digest);
        assert_eq!(
            done.iter().filter(|cached| !**cached).count(),
            1,
            "{} unpacked by exactly one pull: {done:?}",
            l.digest
        );
        assert_eq!(proxy.blob_gets(&l.digest), 1, "{} fetched once", l.digest);
        let dir = layer_dir(&sandbox.cache(), &l.diff_id);
        assert_eq!(dir_names(&dir), ["layer.json", "root"]);
    }
    assert_eq!(published(&sandbox.cache()).len(), img.layers.len());
    assert!(staging(&sandbox.cache()).is_empty());
    assert_eq!(dir_names(&sandbox.cache().join("images")).len(), 1);
    sandbox.assert_outside_untouched();
}

#[test]
fn layers_content_only_pull_then_unpack_from_the_store() {
    require!(can_run());
    let reg = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&reg.url());
    let img = image_on_base(Layer::random("app/c.bin", 1, 12, Compression::Gzip));
    push(&reg, "share/c", "v1", &img);
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());
    let reference = format!("{}/share/c:v1", proxy.host());

    let out = cvmd.pull(&reference, &["--no-unpack"]);
    assert_success(&out, "pull --no-unpack");
    for l in &img.layers {
        assert!(
            blob_path(&sandbox.cache(), &l.digest).is_file(),
            "blob {} stored",
            l.digest
        );
    }
    assert!(
        published(&sandbox.cache()).is_empty(),
        "--no-unpack unpacks nothing"
    );

    proxy.clear_requests();
    let out = cvmd.pull(&reference, &["--json"]);
    assert_success(&out, "pull");
    assert_eq!(
        published(&sandbox.cache()).len(),
        img.layers.len(),
        "every layer unpacked"
    );
    for l in &img.layers {
        assert_eq!(
            proxy.blob_gets(&l.digest),
            0,
            "unpacked from the stored blob, not downloaded again"
        );
    }
}
