//! Tests that unpack real tars into temp dirs. They need root (mknod,
//! chown, trusted.* xattrs); `require_root` says so and skips otherwise.

mod apply;
mod caps;
mod hostile;
mod limits;
mod pax;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{unpack_layer, UnpackError, UnpackOptions, UnpackStats};

pub(super) const IMAGE: &str = "reg/x:1";
pub(super) const MTIME: u64 = 1_600_000_000;

pub(super) fn opts() -> UnpackOptions {
    UnpackOptions {
        image: IMAGE.to_string(),
        layer: "sha256:test-layer".to_string(),
        max_unpacked_bytes: 0,
        preserve_ownership: true,
        image_meter: None,
        cache_reserve: None,
        limits: Default::default(),
        skip_estargz_metadata: false,
    }
}

/// Root-only tests return early with a note rather than fail.
pub(super) fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("{test}: skipped, needs root for mknod/chown/trusted xattrs");
    false
}

/// Builds a layer tar in memory. Names and link names are written into the
/// header bytes directly, because `tar::Builder` refuses `..` and absolute
/// names, which is exactly what the hostile tests need.
pub(super) struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub(super) fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub(super) fn entry(
        &mut self,
        name: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
        tweak: impl FnOnce(&mut Header),
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        tweak(&mut h);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub(super) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, EntryType::Regular, "", data, |_| {})
    }

    pub(super) fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, EntryType::Directory, "", b"", |_| {})
    }

    pub(super) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, EntryType::Symlink, target, b"", |_| {})
    }

    pub(super) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, EntryType::Link, target, b"", |_| {})
    }

    /// A PAX local header ('x') describing the next entry.
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (key, value) in records {
            body.extend(pax_record(key, value));
        }
        self.entry("PaxHeaders/x", EntryType::XHeader, "", &body, |_| {})
    }

    pub(super) fn builder(&mut self) -> &mut tar::Builder<Vec<u8>> {
        &mut self.b
    }

    pub(super) fn bytes(&mut self) -> Vec<u8> {
        self.b.finish().unwrap();
        self.b.get_ref().clone()
    }
}

/// `"%d %s=%s\n"`, where the length counts the whole record itself.
pub(super) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', '\n'
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// `tmp/outer/dest` plus a sentinel `tmp/outer/sentinel`, so escapes of one
/// or two levels land somewhere the test inspects.
pub(super) struct Sandbox {
    _tmp: tempfile::TempDir,
    pub tmp: PathBuf,
    pub outer: PathBuf,
    pub dest: PathBuf,
    before: Vec<(PathBuf, Snapshot)>,
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    ino: u64,
    mode: u32,
    uid: u32,
    nlink: u64,
    mtime: (i64, i64),
    xattrs: Vec<u8>,
}

fn snapshot(p: &Path) -> Snapshot {
    let m = fs::symlink_metadata(p).unwrap();
    let mut xattrs = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut xattrs[..]).unwrap();
    xattrs.truncate(n);
    Snapshot {
        ino: m.ino(),
        mode: m.mode(),
        uid: m.uid(),
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        xattrs,
    }
}

impl Sandbox {
    pub(super) fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("outer");
        let dest = outer.join("dest");
        fs::create_dir_all(&dest).unwrap();
        fs::write(outer.join("sentinel"), b"keep").unwrap();
        let watched = [
            tmp.path().to_path_buf(),
            outer.clone(),
            outer.join("sentinel"),
            PathBuf::from("/etc/passwd"),
        ];
        let before = watched.iter().map(|p| (p.clone(), snapshot(p))).collect();
        Self {
            tmp: tmp.path().to_path_buf(),
            outer,
            dest,
            before,
            _tmp: tmp,
        }
    }

    pub(super) fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack_layer(tar, &self.dest, &opts())
    }

    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }

    /// Nothing appeared, vanished or changed next to or above `dest`.
    pub(super) fn assert_contained(&self) {
        assert_eq!(names(&self.tmp), ["outer"]);
        assert_eq!(names(&self.outer), ["dest", "sentinel"]);
        assert_eq!(fs::read(self.outer.join("sentinel")).unwrap(), b"keep");
        for (p, snap) in &self.before {
            assert_eq!(&snapshot(p), snap, "{} changed", p.display());
        }
    }
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub(super) fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}
