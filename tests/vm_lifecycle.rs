//! The workspace behaves like a machine under real runc: an init other
//! than systemd stops on its own request; `reboot` inside boots the
//! workspace again in place; `poweroff` ends cvmd with 0; the memory
//! cgroup's OOM kills are counted and named.
//!
//! Needs root, runc, busybox-static and docker-registry; skips with a
//! reason otherwise (panics under CI=true).

#[allow(dead_code)]
mod api_support;
mod common;
mod layers_support;

use std::time::{Duration, Instant};

use api_support::{runc_present, start_cvmd};
use common::image::{Compression, Format, ImageBuilder, LayerBuilder};
use common::Registry;
use layers_support::*;

const INITTAB: &str = "\
::sysinit:/bin/echo busybox init booted
::respawn:/bin/sleep 3600
::shutdown:/bin/echo busybox init shutting down
";

/// busybox-static with `/sbin/init` a link to it, and an inittab that keeps
/// one service alive and says when it shuts down.
fn busybox_init_image() -> common::image::Image {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .dir("sbin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .file("bin/busybox", &busybox, 0o755)
        .file("etc/inittab", INITTAB.as_bytes(), 0o644)
        .symlink("sbin/init", "/bin/busybox");
    for app in [
        "sh", "sleep", "echo", "cat", "reboot", "poweroff", "halt", "head", "dd",
    ] {
        layer = layer.symlink(&format!("bin/{app}"), "busybox");
    }
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .build()
}

fn prerequisites() -> bool {
    can_run() && runc_present()
}

#[test]
fn busybox_init_stops_cleanly_on_sigterm_within_seconds() {
    if !prerequisites() {
        return;
    }
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/busybox-init", "v1", &busybox_init_image());
    let cvmd = Cvmd::new(&sandbox.cache(), &reg.host());
    // start_cvmd's stop timeout is 5 s: ending before it, with 0, is the
    // init's own shutdown, not SIGKILL after the grace period.
    let running = start_cvmd(&cvmd, &reference, &[]);
    running.wait_for("running", |s| s["phase"] == "running");
    // Let busybox init install its handlers before asking it to stop.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let (code, stderr) = running.finish();
    let took = sent.elapsed();
    assert_eq!(code, Some(0), "a clean poweroff: {stderr}");
    assert!(
        took < Duration::from_millis(4500),
        "stopped in {took:?}, not by the grace period: {stderr}"
    );
    assert!(
        stderr.contains("init_flavor=\"busybox\"") || stderr.contains("init_flavor=busybox"),
        "busybox init detected: {stderr}"
    );
    assert!(
        stderr.contains("busybox init shutting down"),
        "its shutdown actions ran: {stderr}"
    );
}
