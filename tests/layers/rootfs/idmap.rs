//! ID mapping: ID-mapped mounts (overlay layers, flat bind) and the
//! chowned-copy fallback.

use crate::common::prereq;
use std::os::unix::fs::MetadataExt;

use cvmd::rootfs::{assemble, assemble_with, teardown, IdMapMode, Mode, ModePreference};

use super::{layers, mounted_under, request, wrap, Mounted, MAP};

#[test]
fn idmapped_overlay_shows_host_ids_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let layers = layers::sample(tmp.path());
    let mut req = request(tmp.path(), layers.clone(), "ws", ModePreference::Overlay);
    req.idmap = Some(MAP);
    let a = assemble(&req).unwrap();
    let _g = Mounted(a.target.clone());
    assert_eq!(
        (a.mode, a.idmap_mode),
        (Mode::Overlay, IdMapMode::IdMappedMount)
    );
    println!("TIMING overlay, 3 ID-mapped layers: phases {:?}", a.phases);
    let meta = |p: &str| std::fs::symlink_metadata(a.target.join(p)).unwrap();
    assert_eq!(
        (meta("etc/passwd").uid(), meta("etc/passwd").gid()),
        (100000, 100000)
    );
    assert_eq!(
        (meta("home/user/file").uid(), meta("hl/a").gid()),
        (101000, 100004)
    );
    assert_eq!(
        meta(".").uid(),
        100000,
        "the upper dir (overlay root) is owned by the mapped root"
    );
    // Copy-up through the ID-mapped layers writes mapped owners to the disk.
    std::fs::write(a.target.join("etc/passwd"), "changed").unwrap();
    let up = std::fs::metadata(tmp.path().join("ws/upper/etc/passwd")).unwrap();
    assert_eq!(up.uid(), 100000);
    // The shared layer dirs are untouched.
    let l = std::fs::metadata(layers[1].join("etc/passwd")).unwrap();
    assert_eq!((l.uid(), l.gid()), (0, 0));
    teardown(&a.target).unwrap();
    assert!(
        mounted_under(tmp.path()).is_empty(),
        "{:?}",
        mounted_under(tmp.path())
    );
    assert!(!tmp.path().join("ws/idmapped").exists());
}

#[test]
fn idmapped_flat_bind_shows_host_ids_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let mut req = request(
        tmp.path(),
        layers::sample(tmp.path()),
        "ws",
        ModePreference::Flat,
    );
    req.idmap = Some(MAP);
    let a = assemble(&req).unwrap();
    let _g = Mounted(a.target.clone());
    assert_eq!(
        (a.mode, a.idmap_mode),
        (Mode::Flat, IdMapMode::IdMappedMount)
    );
    assert_eq!(
        std::fs::metadata(a.target.join("home/user/file"))
            .unwrap()
            .uid(),
        101000
    );
    assert_eq!(
        std::fs::metadata(tmp.path().join("ws/flat/home/user/file"))
            .unwrap()
            .uid(),
        1000
    );
}

#[test]
fn chowned_copy_shifts_owners_and_acls_needs_root() {
    require!(prereq::root("mounts, chown, mknod, trusted.* xattrs"));
    let tmp = tempfile::tempdir().unwrap();
    let mut req = request(
        tmp.path(),
        layers::sample(tmp.path()),
        "ws",
        ModePreference::Auto,
    );
    req.idmap = Some(MAP);
    let a = assemble_with(
        &wrap::Wrapped {
            no_idmap: true,
            ..Default::default()
        },
        &req,
    )
    .unwrap();
    let _g = Mounted(a.target.clone());
    assert_eq!((a.mode, a.idmap_mode), (Mode::Flat, IdMapMode::ChownedCopy));
    let snap = layers::snapshot(&a.target);
    assert_eq!((snap["etc/passwd"].uid, snap["hl/b"].gid), (100000, 100004));
    assert_eq!(
        (snap["home/user/file"].uid, snap["home/user/file"].gid),
        (101000, 101000)
    );
    assert_eq!(snap["usr/bin/su"].mode, 0o4755, "setuid survives the chown");
    let journal = &snap["var/log/journal"];
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        let v = &journal.xattrs.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(v, &layers::acl(101000, 100004), "{name}");
    }
    teardown(&a.target).unwrap();
    // A plain request on the same (shifted) disk is not double-mapped:
    // the kept disk's owners follow it back to unshifted, as recorded.
    req.idmap = None;
    let b = assemble(&req).unwrap();
    let snap = layers::snapshot(&b.target);
    assert_eq!((snap["etc/passwd"].uid, snap["hl/b"].gid), (0, 4));
    assert_eq!(snap["home/user/file"].uid, 1000);
    assert_eq!(snap["usr/bin/su"].mode, 0o4755, "setuid survives the chown");
    let journal = &snap["var/log/journal"];
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        let v = &journal.xattrs.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(v, &layers::acl(1000, 4), "{name} follows too");
    }
    teardown(&b.target).unwrap();
    assert!(mounted_under(tmp.path()).is_empty());
}
