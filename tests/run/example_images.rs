//! The Docker example image (`images/build.sh docker`) builds, carries the
//! image config a systemd workspace needs, and, assembled by cvmd from the
//! registry, has Docker installed and `docker.service` enabled beside the
//! masked units. (Booting it is Sysbox's job: under plain runc, without
//! Sysbox's user-namespaced /proc, /sys and nested overlay support,
//! dockerd's containers do not run; see docs/features.md.)
//!
//! Needs root, docker-registry and the build script's tools with a
//! reachable Debian mirror (the first build takes a few minutes; cached
//! afterwards); skips with a reason otherwise.

use std::path::Path;

use crate::common::layers::*;
use crate::common::{debootstrap, Registry};

/// The image config of `tag` in an OCI layout.
fn layout_config(layout: &Path, tag: &str) -> serde_json::Value {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = read(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in the layout: {index}"));
    let manifest = read(&blob(desc["digest"].as_str().unwrap()));
    read(&blob(manifest["config"]["digest"].as_str().unwrap()))
}

#[test]
fn docker_image_builds_with_docker_enabled_root() {
    require!(can_run());
    require!(debootstrap::available());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let reference =
        debootstrap::build_and_push("docker", &format!("{}/examples", reg.host()), Some(&layout));

    let config = layout_config(&layout, "debian-docker-bookworm");
    assert_eq!(config["config"]["StopSignal"], "SIGRTMIN+3", "{config}");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/sbin/init"]));

    // What cvmd makes of it: the rootfs a workspace would boot.
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let state = work.path().join("state");
    let dir = work.path().join("rootfs");
    let s = state.to_str().unwrap();
    let out = cvmd.run(&[
        "rootfs",
        &reference,
        dir.to_str().unwrap(),
        "--state-dir",
        s,
    ]);
    assert_success(&out, "cvmd rootfs of the docker image");
    let checks = (|| -> Result<(), String> {
        let link = |rel: &str| std::fs::read_link(dir.join(rel)).map_err(|e| format!("{rel}: {e}"));
        let wants = link("etc/systemd/system/multi-user.target.wants/docker.service")?;
        if !wants.ends_with("docker.service") {
            return Err(format!("docker.service is enabled as {wants:?}"));
        }
        // The link is absolute inside the image: resolve it in the rootfs.
        let unit = dir.join(wants.strip_prefix("/").unwrap_or(&wants));
        if !unit.is_file() {
            return Err(format!("{} is not in the image", wants.display()));
        }
        for bin in ["usr/sbin/dockerd", "usr/bin/docker", "usr/bin/containerd"] {
            if !dir.join(bin).is_file() {
                return Err(format!("{bin} is missing"));
            }
        }
        if !link("sbin/init")?.ends_with("systemd") {
            return Err("/sbin/init is not systemd".into());
        }
        let masked = link("etc/systemd/system/sys-kernel-debug.mount")?;
        if masked != Path::new("/dev/null") {
            return Err(format!("sys-kernel-debug.mount is not masked: {masked:?}"));
        }
        Ok(())
    })();
    let out = cvmd.run(&[
        "rootfs",
        "--unmount",
        dir.to_str().unwrap(),
        "--state-dir",
        s,
    ]);
    assert_success(&out, "cvmd rootfs --unmount");
    if let Err(why) = checks {
        panic!("the docker image: {why}");
    }
    sandbox.assert_outside_untouched();
}
