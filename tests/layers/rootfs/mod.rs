//! Rootfs assembly against the real kernel. Every test needs root (mounts,
//! chown, device nodes, trusted.* xattrs) and says so when it cannot run.

mod idmap;
mod layers;
mod wrap;

use crate::common::prereq;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cvmd::rootfs::{
    self, assemble, assemble_with, teardown, IdMap, IdMapMode, Mode, ModePreference, Request,
};

const MAP: IdMap = IdMap {
    host_uid: 100000,
    host_gid: 100000,
    size: 65536,
};

fn request(base: &Path, layers: Vec<PathBuf>, ws: &str, mode: ModePreference) -> Request {
    Request {
        layers,
        workspace_dir: base.join(ws),
        target: base.join(ws).join("rootfs"),
        mode,
        idmap: None,
        reset: false,
        carry: Vec::new(),
    }
}

/// Tears the target down even when an assertion fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = teardown(&self.0);
    }
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&dir)))
        .map(String::from)
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn overlay_and_flat_views_are_identical_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let layers = layers::sample(tmp.path());
    let before = layers::snapshot(&layers[0]);
    let o = assemble(&request(
        tmp.path(),
        layers.clone(),
        "ov",
        ModePreference::Overlay,
    ))
    .unwrap();
    let _g1 = Mounted(o.target.clone());
    let f = assemble(&request(
        tmp.path(),
        layers.clone(),
        "fl",
        ModePreference::Flat,
    ))
    .unwrap();
    let _g2 = Mounted(f.target.clone());
    assert_eq!((o.mode, f.mode), (Mode::Overlay, Mode::Flat));
    let (ov, fl) = (layers::snapshot(&o.target), layers::snapshot(&f.target));
    let keys = |m: &std::collections::BTreeMap<String, layers::Entry>| {
        m.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(keys(&ov), keys(&fl));
    for (path, e) in &ov {
        assert_eq!(
            Some(e),
            fl.get(path),
            "entry {path:?} differs (left overlay, right flat)"
        );
    }
    // The merge rules, checked on the merged view itself.
    for gone in ["gone", "usr/lib/a", "data", "opq/keep1", "d2f/child"] {
        assert!(!ov.contains_key(gone), "{gone} should be hidden");
    }
    for kept in [
        "usr/lib/b",
        "opq/new",
        "f2d/inner",
        "bin/sh2",
        "dev/null",
        "dev/fifo",
        "abs-link",
    ] {
        assert!(ov.contains_key(kept), "{kept} should be visible");
    }
    assert_eq!(ov["d2f"].kind, "file");
    assert_eq!(ov["hl/b"].link_of.as_deref(), Some("hl/a"));
    assert_eq!(fl["usr/bin/su"].mode, 0o4755);
    assert_eq!(ov["etc/passwd"].content, b"root:x:0:0\nuser:x:1000:1000\n");
    assert_eq!(layers::snapshot(&layers[0]), before, "a layer dir changed");
    teardown(&o.target).unwrap();
    teardown(&f.target).unwrap();
    teardown(&f.target).unwrap();
    assert!(
        mounted_under(tmp.path()).is_empty(),
        "{:?}",
        mounted_under(tmp.path())
    );
}

fn many_layers(base: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let d = base.join(format!("L/{i:03}"));
            layers::file(&d, &format!("layers/{i}"), &i.to_string(), 0o644, (0, 0));
            layers::file(&d, "top", &i.to_string(), 0o644, (0, 0));
            d
        })
        .collect()
}

#[test]
fn two_hundred_layers_mount_as_overlay_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    // A long workspace path on purpose: the layer list must not depend on
    // fitting path names into one page.
    let deep = tmp
        .path()
        .join("a-rather-long-directory-name-for-the-workspace-cache-xxxxxxxxxxxx");
    let layers = many_layers(&deep, 200);
    let req = request(&deep, layers, "ws", ModePreference::Overlay);
    let t = Instant::now();
    let a = assemble(&req).unwrap();
    let took = t.elapsed();
    let _g = Mounted(a.target.clone());
    assert_eq!(a.mode, Mode::Overlay);
    assert_eq!(
        std::fs::read_to_string(a.target.join("top")).unwrap(),
        "199"
    );
    assert_eq!(
        std::fs::read_dir(a.target.join("layers")).unwrap().count(),
        200
    );
    println!(
        "TIMING overlay 200 layers: assemble {:.2} ms, phases {:?}",
        ms(took),
        a.phases
    );
    teardown(&a.target).unwrap();
    assert!(mounted_under(tmp.path()).is_empty());
}

#[test]
fn assemble_time_five_layers_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let layers = many_layers(tmp.path(), 5);
    let req = request(tmp.path(), layers.clone(), "ws", ModePreference::Overlay);
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let a = assemble(&req).unwrap();
        times.push(t.elapsed());
        teardown(&a.target).unwrap();
    }
    times.sort();
    println!(
        "TIMING overlay 5 layers: median {:.2} ms, max {:.2} ms (20 runs)",
        ms(times[10]),
        ms(times[19])
    );
    assert!(times[10] < Duration::from_millis(50));

    let sample = layers::sample(&tmp.path().join("s"));
    let mut flat = request(tmp.path(), sample, "flat", ModePreference::Flat);
    flat.reset = true;
    let t = Instant::now();
    let a = assemble(&flat).unwrap();
    let took = t.elapsed();
    teardown(&a.target).unwrap();
    println!(
        "TIMING flat, 3 small layers (~30 entries): assemble {:.2} ms, phases {:?}",
        ms(took),
        a.phases
    );
    assert!(mounted_under(tmp.path()).is_empty());
}

#[test]
fn upper_persists_and_reset_discards_it_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let layers = layers::sample(tmp.path());
    for (ws, mode) in [
        ("ov", ModePreference::Overlay),
        ("fl", ModePreference::Flat),
    ] {
        let mut req = request(tmp.path(), layers.clone(), ws, mode);
        let a = assemble(&req).unwrap();
        std::fs::write(a.target.join("etc/mine"), "kept").unwrap();
        std::fs::remove_file(a.target.join("bin/sh")).unwrap();
        teardown(&a.target).unwrap();
        assert!(!a.target.join("etc/mine").exists());
        let a = assemble(&req).unwrap();
        assert_eq!(
            std::fs::read_to_string(a.target.join("etc/mine")).unwrap(),
            "kept",
            "{ws}"
        );
        assert!(!a.target.join("bin/sh").exists());
        teardown(&a.target).unwrap();
        req.reset = true;
        let a = assemble(&req).unwrap();
        assert!(
            !a.target.join("etc/mine").exists(),
            "{ws}: reset kept the disk"
        );
        assert!(a.target.join("bin/sh").exists());
        teardown(&a.target).unwrap();
    }
    assert!(mounted_under(tmp.path()).is_empty());
}

#[test]
fn nested_overlay_falls_back_to_flat_and_empty_image_mounts_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let layers = layers::sample(tmp.path());
    // An outer overlay, as when cvmd itself runs in an overlay-rooted container.
    let outer = request(
        tmp.path(),
        vec![layers[0].clone()],
        "outer",
        ModePreference::Overlay,
    );
    let o = assemble(&outer).unwrap();
    let _g = Mounted(o.target.clone());
    let inner = request(&o.target, layers.clone(), "ws", ModePreference::Auto);
    let a = assemble(&inner).unwrap();
    let _g2 = Mounted(a.target.clone());
    assert_eq!(a.mode, Mode::Flat);
    let explicit = request(&o.target, layers, "ws2", ModePreference::Overlay);
    assert!(matches!(
        assemble(&explicit),
        Err(rootfs::RootfsError::OverlayUnavailable { .. })
    ));
    teardown(&a.target).unwrap();

    let empty = request(tmp.path(), Vec::new(), "empty", ModePreference::Overlay);
    let e = assemble(&empty).unwrap();
    assert_eq!(std::fs::read_dir(&e.target).unwrap().count(), 0);
    teardown(&e.target).unwrap();
    teardown(&o.target).unwrap();
    assert!(
        mounted_under(tmp.path()).is_empty(),
        "{:?}",
        mounted_under(tmp.path())
    );
}

#[test]
fn classic_mount_fallback_with_short_links_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp
        .path()
        .join("a-rather-long-directory-name-for-the-workspace-cache-xxxxxxxxxxxx");
    let ops = wrap::Wrapped {
        refuse_lowerdir_plus: true,
        ..Default::default()
    };
    let req = request(
        &deep,
        many_layers(&deep, 200),
        "ws",
        ModePreference::Overlay,
    );
    let a = assemble_with(&ops, &req).unwrap();
    let _g = Mounted(a.target.clone());
    assert_eq!(
        std::fs::read_to_string(a.target.join("top")).unwrap(),
        "199"
    );
    assert_eq!(
        std::fs::read_dir(a.target.join("layers")).unwrap().count(),
        200
    );
    teardown(&a.target).unwrap();

    // ID-mapped layers when fds are refused: helper mounts by path, then
    // (lowerdir+ refused too) classic mount naming them `idmapped/N`.
    let layers = layers::sample(tmp.path());
    for ops in [
        wrap::Wrapped {
            refuse_fd_lowers: true,
            ..Default::default()
        },
        wrap::Wrapped {
            refuse_fd_lowers: true,
            refuse_lowerdir_plus: true,
            ..Default::default()
        },
    ] {
        let mut req = request(tmp.path(), layers.clone(), "idm", ModePreference::Overlay);
        req.idmap = Some(MAP);
        req.reset = true;
        let a = assemble_with(&ops, &req).unwrap();
        let _g = Mounted(a.target.clone());
        assert_eq!(a.idmap_mode, IdMapMode::IdMappedMount);
        assert_eq!(
            std::fs::metadata(a.target.join("home/user/file"))
                .unwrap()
                .uid(),
            101000
        );
        // Helper mounts were detached once the overlay held its layers.
        let helpers = tmp.path().join("idm/idmapped");
        let points: Vec<String> = mounted_under(tmp.path())
            .iter()
            .map(|l| l.split(' ').nth(4).unwrap().to_string())
            .collect();
        assert!(
            points.iter().all(|p| !p.contains("/idm/idmapped")),
            "{points:?}"
        );
        assert!(std::fs::read_dir(&helpers).map(|d| d.count()).unwrap_or(0) == 0);
        teardown(&a.target).unwrap();
    }
    assert!(
        mounted_under(tmp.path()).is_empty(),
        "{:?}",
        mounted_under(tmp.path())
    );
}
