//! `cvmd rootfs IMAGE DIR`: a warm start from the node cache alone, the
//! workspace's disk across remounts, per-workspace ID ranges, and gc never
//! taking the layers of a mounted rootfs.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::image::{Compression, Format, ImageBuilder, LayerBuilder};
use crate::common::layers::*;
use crate::common::{is_mounted, Registry};

fn image() -> crate::common::image::Image {
    ImageBuilder::new(Format::Oci)
        .layer(
            LayerBuilder::new()
                .dir("etc", 0o755)
                .file("etc/os-release", b"ID=cvmd-test\n", 0o644)
                .build(Compression::Gzip),
        )
        .layer(
            LayerBuilder::new()
                .file("etc/motd", b"hello\n", 0o644)
                .build(Compression::Zstd),
        )
        .build()
}

struct Rootfs<'a> {
    cvmd: &'a CvmdOnCache,
    state: &'a Path,
}

impl Rootfs<'_> {
    fn mount(&self, reference: &str, dir: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "rootfs",
            reference,
            dir.to_str().unwrap(),
            "--json",
            "--state-dir",
            self.state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = self.cvmd.run(&args);
        assert_success(&out, "cvmd rootfs");
        serde_json::from_slice(&out.stdout).expect("cvmd rootfs --json prints one JSON object")
    }

    fn unmount(&self, dir: &Path) {
        let out = self.cvmd.run(&[
            "rootfs",
            "--unmount",
            dir.to_str().unwrap(),
            "--state-dir",
            self.state.to_str().unwrap(),
        ]);
        assert_success(&out, "cvmd rootfs --unmount");
        assert!(!is_mounted(dir), "{} is still mounted", dir.display());
    }
}

#[test]
fn rootfs_warm_start_needs_no_registry() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let (reference, host) = {
        let reg = Registry::plain().unwrap();
        let reference = push(&reg, "rootfs/warm", "v1", &image());
        CvmdOnCache::new(&sandbox.cache(), &reg.host()).pull_ok(&reference);
        (reference, reg.host())
        // The registry stops here: the warm start must not need it.
    };
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &host);
    let rootfs = Rootfs {
        cvmd: &cvmd,
        state: state.path(),
    };
    let dir = state.path().join("root");
    let said = rootfs.mount(&reference, &dir, &[]);
    assert_eq!(said["mode"], "overlay");
    assert_eq!(said["pulled"], false);
    assert_eq!(said["idmap"], "none");
    assert!(said["phases_ms"]["mount"].as_f64().is_some(), "{said}");
    assert_eq!(
        std::fs::read(dir.join("etc/os-release")).unwrap(),
        b"ID=cvmd-test\n"
    );
    assert_eq!(std::fs::read(dir.join("etc/motd")).unwrap(), b"hello\n");
    rootfs.unmount(&dir);

    // The same with the policy that forbids pulls; and one that needs a
    // pull fails with a message saying what to do.
    let said = rootfs.mount(&reference, &dir, &["--pull-policy", "Never"]);
    assert_eq!(said["pulled"], false);
    rootfs.unmount(&dir);
    let out = cvmd.run(&[
        "rootfs",
        &format!("{host}/rootfs/other:v1"),
        dir.to_str().unwrap(),
        "--pull-policy",
        "Never",
    ]);
    assert!(
        error_line(&out).contains("not in the node cache and the pull policy is Never"),
        "{}",
        error_line(&out)
    );
    sandbox.assert_outside_untouched();
}

#[test]
fn rootfs_cold_start_pulls_what_is_missing() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "rootfs/cold", "v1", &image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let rootfs = Rootfs {
        cvmd: &cvmd,
        state: state.path(),
    };
    let dir = state.path().join("root");
    let said = rootfs.mount(&reference, &dir, &[]);
    assert_eq!(said["pulled"], true);
    assert!(dir.join("etc/motd").is_file());
    rootfs.unmount(&dir);
}

#[test]
fn rootfs_disk_survives_a_remount_and_reset_discards_it() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "rootfs/disk", "v1", &image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let rootfs = Rootfs {
        cvmd: &cvmd,
        state: state.path(),
    };
    let dir = state.path().join("root");
    for mode in ["overlay", "flat"] {
        rootfs.mount(&reference, &dir, &["--mode", mode, "--name", mode]);
        std::fs::write(dir.join("etc/mine"), b"user data").unwrap();
        std::fs::remove_file(dir.join("etc/motd")).unwrap();
        rootfs.unmount(&dir);
        rootfs.mount(&reference, &dir, &["--mode", mode, "--name", mode]);
        assert_eq!(
            std::fs::read(dir.join("etc/mine")).unwrap(),
            b"user data",
            "{mode}"
        );
        assert!(
            !dir.join("etc/motd").exists(),
            "{mode}: the deletion persists"
        );
        rootfs.unmount(&dir);
        rootfs.mount(
            &reference,
            &dir,
            &["--mode", mode, "--name", mode, "--reset"],
        );
        assert!(
            !dir.join("etc/mine").exists(),
            "{mode}: --reset discards the disk"
        );
        assert!(dir.join("etc/motd").is_file(), "{mode}");
        rootfs.unmount(&dir);
    }
    // The layers themselves never changed.
    let (record, _) = image_record(&sandbox.cache(), &reference);
    let top = layer_dir(
        &sandbox.cache(),
        record["layers"][1]["diff_id"].as_str().unwrap(),
    );
    assert!(top.join("root/etc/motd").is_file());
}

#[test]
fn rootfs_idmap_auto_gives_each_workspace_its_own_range() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "rootfs/idmap", "v1", &image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let rootfs = Rootfs {
        cvmd: &cvmd,
        state: state.path(),
    };
    let mut hosts = Vec::new();
    for name in ["ws-a", "ws-b"] {
        let dir = state.path().join(name);
        let said = rootfs.mount(&reference, &dir, &["--idmap", "auto", "--name", name]);
        assert_eq!(said["idmap"], "id-mapped mount", "{said}");
        let host = said["host_id"].as_u64().unwrap();
        let meta = std::fs::metadata(dir.join("etc/os-release")).unwrap();
        assert_eq!(
            u64::from(meta.uid()),
            host,
            "root-owned files appear as the range's first ID"
        );
        hosts.push(host);
        rootfs.unmount(&dir);
    }
    assert_eq!(
        hosts,
        [100_000, 165_536],
        "each workspace has its own range"
    );
    // A workspace keeps its range.
    let dir = state.path().join("ws-a");
    assert_eq!(
        rootfs.mount(&reference, &dir, &["--idmap", "auto", "--name", "ws-a"])["host_id"],
        100_000
    );
    rootfs.unmount(&dir);
}

#[test]
fn gc_never_takes_the_layers_of_a_mounted_rootfs() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "rootfs/gc", "v1", &image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let rootfs = Rootfs {
        cvmd: &cvmd,
        state: state.path(),
    };
    let dir = state.path().join("root");
    rootfs.mount(&reference, &dir, &[]);
    // Nothing names the image any more; only the mount uses its layers.
    let (_, record_path) = image_record(&sandbox.cache(), &reference);
    std::fs::remove_file(record_path).unwrap();
    let report = cvmd.gc(&[]);
    assert_eq!(report["removed_layers"], 0, "{report}");
    assert_eq!(report["kept_in_use"], 2, "{report}");
    assert_eq!(std::fs::read(dir.join("etc/motd")).unwrap(), b"hello\n");
    rootfs.unmount(&dir);
    let report = cvmd.gc(&[]);
    assert_eq!(report["removed_layers"], 2, "{report}");
    assert!(published(&sandbox.cache()).is_empty());
}
