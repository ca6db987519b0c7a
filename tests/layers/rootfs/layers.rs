//! Hand-made layer dirs in overlayfs form, and a snapshot of a tree for
//! comparing views.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, XattrFlags, CWD};

pub fn file(root: &Path, rel: &str, body: &str, mode: u32, owner: (u32, u32)) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, body).unwrap();
    std::os::unix::fs::lchown(&p, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn dir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn whiteout(root: &Path, rel: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    rustix::fs::mknodat(CWD, &p, FileType::CharacterDevice, Mode::empty(), 0).unwrap();
}

pub fn opaque(root: &Path, rel: &str) {
    dir(root, rel, 0o755);
    rustix::fs::lsetxattr(
        root.join(rel),
        "trusted.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
}

/// POSIX ACL xattr value (version 2) with a named user and a named group.
pub fn acl(user: u32, group: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 7u16, u32::MAX),
        (2, 5, user),
        (4, 5, u32::MAX),
        (8, 5, group),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// Three layers exercising every merge rule; returns them bottom to top.
pub fn sample(base: &Path) -> Vec<PathBuf> {
    let l: Vec<PathBuf> = (0..3).map(|i| base.join(format!("layer{i}"))).collect();
    for d in &l {
        dir(d, "", 0o755);
    }
    let (a, b, c) = (&l[0], &l[1], &l[2]);
    file(a, "etc/passwd", "root:x:0:0\n", 0o644, (0, 0));
    rustix::fs::lsetxattr(a.join("etc/passwd"), "user.test", b"1", XattrFlags::empty()).unwrap();
    file(a, "bin/sh", "#!sh\n", 0o755, (0, 0));
    symlink("sh", a.join("bin/link")).unwrap();
    symlink("/etc/passwd", a.join("abs-link")).unwrap();
    file(a, "usr/lib/a", "a", 0o644, (0, 0));
    file(a, "usr/lib/b", "b", 0o644, (0, 0));
    file(a, "data/old/x", "x", 0o600, (2, 2));
    file(a, "gone", "bye", 0o644, (0, 0));
    file(a, "hl/a", "shared", 0o640, (0, 4));
    fs::hard_link(a.join("hl/a"), a.join("hl/b")).unwrap();
    file(a, "opq/keep1", "1", 0o644, (0, 0));
    file(a, "f2d", "file", 0o644, (0, 0));
    file(a, "d2f/child", "c", 0o644, (0, 0));
    file(a, "home/user/file", "mine", 0o600, (1000, 1000));
    file(a, "usr/bin/su", "su", 0o4755, (0, 0));
    dir(a, "dev", 0o755);
    rustix::fs::mknodat(
        CWD,
        a.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        a.join("dev/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    dir(a, "var/log/journal", 0o2755);
    rustix::fs::lsetxattr(
        a.join("var/log/journal"),
        "system.posix_acl_default",
        &acl(1000, 4),
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        a.join("var/log/journal"),
        "system.posix_acl_access",
        &acl(1000, 4),
        XattrFlags::empty(),
    )
    .unwrap();

    whiteout(b, "gone");
    opaque(b, "opq");
    file(b, "opq/new", "n", 0o644, (0, 0));
    file(b, "f2d/inner", "inner", 0o644, (0, 0));
    file(b, "d2f", "now a file", 0o644, (0, 0));
    file(
        b,
        "etc/passwd",
        "root:x:0:0\nuser:x:1000:1000\n",
        0o644,
        (0, 0),
    );
    whiteout(b, "usr/lib/a");

    file(c, "bin/sh2", "#!sh2\n", 0o755, (0, 0));
    file(c, "etc/hostname", "cvm\n", 0o644, (0, 0));
    whiteout(c, "data");
    l
}

/// Everything a merged view shows, per path.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub content: Vec<u8>,
    pub mtime: Option<(i64, i64)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// First path (in walk order) sharing this inode, for hardlinks.
    pub link_of: Option<String>,
}

pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    p: &Path,
    out: &mut BTreeMap<String, Entry>,
    inodes: &mut BTreeMap<(u64, u64), String>,
) {
    let m = fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().display().to_string();
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else {
        "node"
    };
    let content = if ft.is_file() {
        fs::read(p).unwrap()
    } else if ft.is_symlink() {
        fs::read_link(p)
            .unwrap()
            .into_os_string()
            .into_encoded_bytes()
    } else {
        Vec::new()
    };
    let link_of = if !ft.is_dir() && m.nlink() > 1 {
        let first = inodes
            .entry((m.dev(), m.ino()))
            .or_insert_with(|| rel.clone())
            .clone();
        Some(first)
    } else {
        None
    };
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(names) = xattr_names(p) {
        for n in names {
            let mut buf = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(p, n.as_str(), &mut buf[..]).unwrap();
            xattrs.push((n, buf[..len].to_vec()));
        }
    }
    xattrs.sort();
    let entry = Entry {
        kind: kind.into(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev(),
        content,
        mtime: (!rel.is_empty()).then(|| (m.mtime(), m.mtime_nsec())),
        xattrs,
        link_of,
    };
    out.insert(rel, entry);
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            walk(root, &n, out, inodes);
        }
    }
}

fn xattr_names(p: &Path) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..])?;
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}
