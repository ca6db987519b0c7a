//! The workspace's disk behaves like a machine's under real runc: what
//! persists on the volume (`CVMD_PERSIST_DIR`) comes back, owners and
//! modes included, on a fresh cache, a fresh state dir and another ID
//! range; an image update keeps, resets or rebases the writable layer as
//! `CVMD_ON_IMAGE_CHANGE` says.
//!
//! Needs root, runc, busybox-static and docker-registry; skips with a
//! reason otherwise (panics under CI=true).

#[allow(dead_code)]
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::api::{start_cvmd, text, Running};
use crate::common::image::{Compression, Format, ImageBuilder, LayerBuilder};
use crate::common::layers::*;
use crate::common::prereq;
use crate::common::Registry;

/// A busybox workspace with a user `dev` (1000), its home, root's
/// profile and a dpkg status file that says which version it is.
fn image(version: &str) -> crate::common::image::Image {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut layer = LayerBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .dir("var", 0o755)
        .dir("var/lib", 0o755)
        .dir("var/lib/dpkg", 0o755)
        .dir("root", 0o700)
        .file("root/.profile", b"# root's profile\n", 0o600)
        .dir("home", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000:dev:/home/dev:/bin/sh\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\ndev:x:1000:\n", 0o644)
        .file(
            "var/lib/dpkg/status",
            format!("Package: base\nVersion: {version}\n").as_bytes(),
            0o644,
        );
    layer = layer.owner(1000, 1000).dir("home/dev", 0o750).owner(0, 0);
    for app in [
        "sh", "sleep", "echo", "cat", "stat", "chmod", "chown", "mkdir", "id", "dd", "rm",
    ] {
        layer = layer.symlink(&format!("bin/{app}"), "busybox");
    }
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1; done",
        ])
        .build()
}

fn prerequisites() -> prereq::Need {
    can_run()?;
    prereq::runc().map(drop)
}

/// These images are a few MiB: the cache's free-space reserve (10% of a
/// shared test machine's disk) is not what is tested here.
fn with_no_reserve<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--cache-reserve", "0"];
    args.extend_from_slice(extra);
    args
}

fn sh(ws: &Running, user: Option<&str>, script: &str) -> String {
    let mut args = vec!["exec"];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.extend(["--", "/bin/sh", "-c", script]);
    let out = ws.run(&args);
    assert_eq!(out.status.code(), Some(0), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Boots `reference` on a fresh cache and state dir with `extra`, runs
/// `f`, stops it with 0; the cache is gone afterwards.
fn boot(reg: &Registry, reference: &str, extra: &[&str], f: impl FnOnce(&Running)) -> String {
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, reference, &with_no_reserve(extra));
    ws.wait_for("running", |s| s["phase"] == "running");
    f(&ws);
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "stopped on SIGTERM: {stderr}");
    stderr
}

const WRITE: &str = "echo notes > /home/dev/notes && chmod 640 /home/dev/notes \
    && mkdir /home/dev/sub && chmod 2770 /home/dev/sub && id -u";
const WRITE_ROOT: &str = "mkdir -p /var/lib/docker/x && echo layer > /var/lib/docker/x/f \
    && chown 1000:1000 /var/lib/docker/x/f && chmod 604 /var/lib/docker/x/f \
    && echo more >> /root/.profile";
const CHECK: &str = "stat -c '%n %u:%g %a' /home/dev/notes /home/dev/sub /var/lib/docker/x/f \
    /root/.profile /home/dev && cat /home/dev/notes /var/lib/docker/x/f /root/.profile";

fn assert_back(seen: &str) {
    for want in [
        "/home/dev/notes 1000:1000 640",
        "/home/dev/sub 1000:1000 2770",
        "/var/lib/docker/x/f 1000:1000 604",
        "/root/.profile 0:0 600",
        "/home/dev 1000:1000 750",
        "notes\nlayer\n# root's profile\nmore",
    ] {
        assert!(seen.contains(want), "{want:?} in:\n{seen}");
    }
}

#[test]
fn persistent_paths_come_back_on_a_fresh_cache_in_another_id_range() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/disk-paths", "v1", &image("1"));
    let volume = tempfile::tempdir().unwrap();
    let vol = volume.path().to_str().unwrap();
    boot(
        &reg,
        &reference,
        &["--persist-dir", vol, "--idmap", "700000"],
        |ws| {
            assert_eq!(sh(ws, Some("1000"), WRITE), "1000");
            sh(ws, None, WRITE_ROOT);
        },
    );
    // Stored as the workspace sees them, not in the first range.
    let notes = std::fs::metadata(volume.path().join("paths/home/dev/notes")).unwrap();
    assert_eq!((notes.uid(), notes.gid()), (1000, 1000));
    assert!(volume.path().join("paths/var%2Flib%2Fdocker/x/f").is_file());
    // The second pod: a fresh cache, its own range.
    boot(
        &reg,
        &reference,
        &["--persist-dir", vol, "--idmap", "auto"],
        |ws| {
            assert_back(&sh(ws, None, CHECK));
            assert!(ws.status()["disk"]
                .as_str()
                .unwrap()
                .contains("/var/lib/docker on"));
        },
    );
}

#[test]
fn a_whole_disk_comes_back_with_its_owners_in_another_id_range() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/disk-whole", "v1", &image("1"));
    let volume = tempfile::tempdir().unwrap();
    let vol = volume.path().to_str().unwrap();
    let args = |idmap: &'static str| {
        vec![
            "--persist-dir".to_string(),
            vol.to_string(),
            "--persist".into(),
            "disk".into(),
            "--idmap".into(),
            idmap.into(),
        ]
    };
    let a = args("700000");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    boot(&reg, &reference, &a, |ws| {
        sh(ws, Some("1000"), WRITE);
        sh(
            ws,
            None,
            &format!("{WRITE_ROOT} && echo kept > /etc/marker"),
        );
    });
    let note = |p: &Path| std::fs::read_to_string(p.join("disk/upper.idmap")).unwrap();
    assert_eq!(
        note(volume.path()).trim(),
        "shifted uid 700000 gid 700000 size 65536"
    );
    let b = args("auto");
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    boot(&reg, &reference, &b, |ws| {
        assert_back(&sh(ws, None, CHECK));
        assert_eq!(sh(ws, None, "cat /etc/marker"), "kept");
        assert!(ws.status()["disk"]
            .as_str()
            .unwrap()
            .contains("kept, made on sha256:"));
    });
    assert_ne!(
        note(volume.path()).trim(),
        "shifted uid 700000 gid 700000 size 65536",
        "the second range is another one"
    );
}

#[test]
fn an_image_update_keeps_resets_or_rebases_the_disk() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let v1 = push(&reg, "vm/disk-update", "v1", &image("1"));
    let v2 = push(&reg, "vm/disk-update", "v2", &image("2"));
    // The flat copy (no overlay) goes through the same rebase.
    for (policy, mode) in [
        ("keep", "overlay"),
        ("reset", "overlay"),
        ("rebase", "overlay"),
        ("rebase", "flat"),
    ] {
        let volume = tempfile::tempdir().unwrap();
        let vol = volume.path().to_str().unwrap();
        let args = [
            "--persist-dir",
            vol,
            "--persist",
            "disk",
            "--on-image-change",
            policy,
            "--rootfs-mode",
            mode,
        ];
        boot(&reg, &v1, &args, |ws| {
            sh(ws, Some("1000"), WRITE);
            sh(
                ws,
                None,
                "echo 'Package: tool' >> /var/lib/dpkg/status && echo kept > /etc/marker",
            );
        });
        let log = boot(&reg, &v2, &args, |ws| {
            assert_eq!(ws.status()["rootfs_mode"], mode);
            let dpkg = sh(ws, None, "cat /var/lib/dpkg/status");
            let marker = sh(ws, None, "cat /etc/marker 2>/dev/null; true");
            let notes = sh(ws, None, "cat /home/dev/notes 2>/dev/null; true");
            let disk = ws.status()["disk"].as_str().unwrap().to_string();
            assert!(disk.contains("image changed from sha256:"), "{disk}");
            match policy {
                "keep" => {
                    assert!(
                        dpkg.contains("Version: 1") && dpkg.contains("tool"),
                        "{dpkg}"
                    );
                    assert_eq!((marker.as_str(), notes.as_str()), ("kept", "notes"));
                    assert!(disk.contains("kept the whole writable layer"), "{disk}");
                }
                "reset" => {
                    assert!(
                        dpkg.contains("Version: 2") && !dpkg.contains("tool"),
                        "{dpkg}"
                    );
                    assert_eq!((marker.as_str(), notes.as_str()), ("", ""));
                    assert!(disk.contains("started the writable layer fresh"), "{disk}");
                }
                _ => {
                    assert!(
                        dpkg.contains("Version: 2") && !dpkg.contains("tool"),
                        "{dpkg}"
                    );
                    assert_eq!((marker.as_str(), notes.as_str()), ("", "notes"));
                    assert!(disk.contains("rebased: kept /home"), "{disk}");
                    let seen = sh(ws, None, "stat -c '%u:%g %a' /home/dev/notes /home/dev");
                    assert_eq!(seen, "1000:1000 640\n1000:1000 750");
                }
            }
        });
        assert!(
            log.contains("the workspace's disk was made on another image"),
            "{log}"
        );
        // The record follows the image it now runs.
        let record = std::fs::read_to_string(volume.path().join("disk/image")).unwrap();
        assert!(record.starts_with("sha256:"), "{record}");
    }
}

#[test]
fn a_symlink_on_the_volume_is_refused_not_followed() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/disk-hostile", "v1", &image("1"));
    let volume = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(volume.path().join("paths")).unwrap();
    std::os::unix::fs::symlink(outside.path(), volume.path().join("paths/home")).unwrap();
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(
        &cvmd,
        &reference,
        &with_no_reserve(&["--persist-dir", volume.path().to_str().unwrap()]),
    );
    let (code, stderr, _) = ws.wait_exit(std::time::Duration::from_secs(30));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("a symlink is not followed"),
        "named: {stderr}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // A whole disk whose upper dir is a link out of the volume.
    let volume = tempfile::tempdir().unwrap();
    std::fs::create_dir(volume.path().join("disk")).unwrap();
    std::os::unix::fs::symlink(outside.path(), volume.path().join("disk/upper")).unwrap();
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let vol = volume.path().to_str().unwrap();
    let ws = start_cvmd(
        &cvmd,
        &reference,
        &with_no_reserve(&["--persist-dir", vol, "--persist", "disk"]),
    );
    let (code, stderr, _) = ws.wait_exit(std::time::Duration::from_secs(30));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("it is a symlink"), "named: {stderr}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_sized_disk_fills_up_inside_with_enospc_and_one_event_outside() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/disk-size", "v1", &image("1"));
    let volume = tempfile::tempdir().unwrap();
    let vol = volume.path().to_str().unwrap();
    let args = [
        "--persist-dir",
        vol,
        "--persist",
        "paths",
        "--disk-size",
        "32MiB",
    ];
    let log = boot(&reg, &reference, &args, |ws| {
        let status = ws.status();
        let check = status["preflight"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "disk-size")
            .cloned()
            .unwrap_or_default();
        assert_eq!(check["status"], "ok", "{status}");
        assert!(
            check["detail"]
                .as_str()
                .unwrap()
                .contains("loop-mounted ext4"),
            "{check}"
        );
        let events = ws
            .ctl(&["events", "-f", "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Twice over the bound: in a persistent path and in the writable
        // layer, which share it.
        let out = ws.run(&[
            "exec",
            "--",
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/home/dev/big bs=1M count=64; echo rc=$?; \
             dd if=/dev/zero of=/big bs=1M count=8 2>&1; echo rc=$?",
        ]);
        let said = text(&out);
        assert!(said.contains("No space left on device"), "{said}");
        assert!(!said.contains("rc=0"), "{said}");
        // cvmd looks every 2 s; it says so once, however long it stays full.
        std::thread::sleep(std::time::Duration::from_secs(5));
        sh(ws, None, "rm -f /home/dev/big /big");
        let mut events = events;
        let _ = events.kill();
        let out = events.wait_with_output().unwrap();
        let lines = String::from_utf8_lossy(&out.stdout).into_owned();
        let full: Vec<&str> = lines
            .lines()
            .filter(|l| l.contains("\"disk\"") && l.contains("is full"))
            .collect();
        assert_eq!(full.len(), 1, "one event: {lines}");
    });
    assert!(log.contains("the workspace's disk is full"), "{log}");
    // The node's disk holds no more than the bound.
    let image = std::fs::metadata(volume.path().join("disk.ext4")).unwrap();
    assert_eq!(image.len(), 32 << 20);
    assert!(image.blocks() * 512 <= 32 << 20);
}

#[test]
fn a_corrupt_image_record_is_an_unknown_image_with_a_log_line() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/disk-record", "v1", &image("1"));
    let volume = tempfile::tempdir().unwrap();
    let vol = volume.path().to_str().unwrap();
    let args = ["--persist-dir", vol, "--persist", "disk"];
    boot(&reg, &reference, &args, |ws| {
        sh(ws, Some("1000"), WRITE);
        sh(ws, None, "echo kept > /etc/marker");
    });
    std::fs::write(
        volume.path().join("disk/image"),
        "sha256:../../etc\n\0garbage",
    )
    .unwrap();
    // The same image: only the record says otherwise, and the default
    // rebase keeps the persistent paths.
    let log = boot(&reg, &reference, &args, |ws| {
        let disk = ws.status()["disk"].as_str().unwrap().to_string();
        assert!(
            disk.contains("an unknown image (unreadable record)"),
            "{disk}"
        );
        assert_eq!(sh(ws, None, "cat /etc/marker 2>/dev/null; true"), "");
        assert_eq!(sh(ws, None, "cat /home/dev/notes"), "notes");
    });
    assert!(
        log.contains("the disk's image record is unreadable"),
        "{log}"
    );
    let record = std::fs::read_to_string(volume.path().join("disk/image")).unwrap();
    assert!(record
        .trim()
        .parse::<String>()
        .unwrap()
        .starts_with("sha256:"));
    assert!(!record.contains("garbage"), "rewritten: {record}");
}
