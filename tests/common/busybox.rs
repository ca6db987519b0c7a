//! Workspace images made of the host's static busybox (`busybox-static`,
//! which [`prereq::busybox`](super::prereq::busybox) checks for): one
//! builder for the layer every such image starts from.

use super::image::{Compression, Format, Image, ImageBuilder, LayerBuilder};

/// `/bin/busybox` and a link to it in /bin per applet; add the dirs and
/// files an image needs and build it.
pub fn busybox_layer(applets: &[&str]) -> LayerBuilder {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755);
    for app in applets {
        layer = layer.symlink(&format!("bin/{app}"), "busybox");
    }
    layer
}

/// An OCI image of just [`busybox_layer`] (gzip), running `entrypoint`.
pub fn busybox_image(applets: &[&str], entrypoint: &[&str]) -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(busybox_layer(applets).build(Compression::Gzip))
        .entrypoint(entrypoint)
        .build()
}
