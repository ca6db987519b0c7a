//! The workspace images the node tests run: busybox-static images that
//! share layers, each able to check every file of its own at any time.

use sha2::{Digest as _, Sha256};

use super::Node;
use crate::common::image::{pseudo_random, Compression, Format, ImageBuilder, Layer, LayerBuilder};

/// Runs until SIGTERM, then exits 0 (a workspace's init).
const INIT: &str = "trap 'exit 0' TERM; echo workspace-up; while :; do sleep 1 & wait $!; done";

/// The command that exits 0 only if every file of the image reads back
/// whole: run it in the workspace (`cvmctl exec --`).
pub const CHECK: &[&str] = &["/bin/sha256sum", "-c", "-s", "/check.sums"];

/// A layer of `files` plus what the image's `/check.sums` must list for them.
struct Part {
    layer: LayerBuilder,
    sums: Vec<(String, String)>,
}

impl Part {
    fn new() -> Part {
        Part {
            layer: LayerBuilder::new(),
            sums: Vec::new(),
        }
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32) -> Part {
        self.sums
            .push((format!("/{path}"), hex::encode(Sha256::digest(data))));
        self.layer = self.layer.file(path, data, mode);
        self
    }

    /// `count` files of `kib` KiB of incompressible bytes under `dir`.
    fn data(mut self, dir: &str, count: usize, kib: usize, seed: u64) -> Part {
        self.layer = self.layer.dir("data", 0o755).dir(dir, 0o755);
        for i in 0..count {
            let data = pseudo_random(kib * 1024, seed * 100 + i as u64);
            self = self.file(&format!("{dir}/f{i}"), &data, 0o644);
        }
        self
    }
}

/// busybox-static and the applets the workspace uses.
fn base() -> Part {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut part = Part::new();
    part.layer = part.layer.dir("bin", 0o755);
    part = part.file("bin/busybox", &busybox, 0o755);
    for app in ["sh", "sleep", "echo", "cat", "sha256sum", "ls"] {
        part.layer = part.layer.symlink(&format!("bin/{app}"), "busybox");
    }
    part
}

/// An image of `parts` whose top layer adds `/check.sums` for all of them.
fn image(parts: Vec<Part>, name: &str, seed: u64) -> crate::common::image::Image {
    let top = Part::new().data(&format!("data/{name}"), 2, 64, seed);
    let mut sums = String::new();
    let mut layers: Vec<Layer> = Vec::new();
    for part in parts.into_iter().chain([top]) {
        for (path, sum) in &part.sums {
            sums.push_str(&format!("{sum}  {path}\n"));
        }
        layers.push(part.layer.build(Compression::Gzip));
    }
    let check = LayerBuilder::new()
        .file("check.sums", sums.as_bytes(), 0o644)
        .build(Compression::Gzip);
    let mut b = ImageBuilder::new(Format::Oci);
    for l in layers.into_iter().chain([check]) {
        b = b.layer(l);
    }
    b.entrypoint(&["/bin/sh", "-c", INIT]).build()
}

/// Three images pushed to the node's registry: `a` and `b` share the base
/// (busybox) and a middle layer, `c` shares only the base; each has a layer
/// of its own. Their references, in that order.
pub fn shared_layer_images(node: &Node) -> Vec<String> {
    let mid = || Part::new().data("data/mid", 4, 64, 7);
    let images = [
        ("a", image(vec![base(), mid()], "a", 1)),
        ("b", image(vec![base(), mid()], "b", 2)),
        ("c", image(vec![base()], "c", 3)),
    ];
    images
        .iter()
        .map(|(name, img)| node.push(&format!("node/{name}"), "v1", img))
        .collect()
}

/// One small image (the base only), for pull storms.
pub fn small_image(node: &Node) -> String {
    node.push("node/small", "v1", &image(vec![base()], "small", 9))
}

/// An image that shares no layer with the others (no busybox: nothing to
/// run, only to mount): data files and a `check.sums` of relative paths,
/// which [`check_at`] verifies from outside the image.
pub fn lone_image(node: &Node) -> String {
    let part = Part::new().data("data/lone", 3, 64, 11);
    let sums: String = part
        .sums
        .iter()
        .map(|(path, sum)| format!("{sum}  {}\n", path.trim_start_matches('/')))
        .collect();
    let layer = part.layer.file("check.sums", sums.as_bytes(), 0o644);
    let img = ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .cmd(&["/none"])
        .build();
    node.push("node/lone", "v1", &img)
}

/// A command for the pod (its coreutils) that exits 0 only if every file of
/// the lone image mounted at `dir` reads back whole.
pub fn check_at(dir: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("cd {dir} && sha256sum -c --quiet check.sums"),
    ]
}

/// An image to convert to eStargz for lazy start: the base and 2 MiB of
/// data in eight files (each many 64 KiB chunks), checkable by
/// [`CHECK`] like the others.
pub fn lazy_source_image(node: &Node) -> String {
    let data = Part::new().data("data/big", 8, 256, 21);
    node.push(
        "node/lazy-src",
        "v1",
        &image(vec![base(), data], "lazy", 21),
    )
}
