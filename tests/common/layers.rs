//! Shared pieces of the `layers_*` integration tests: running `cvmd`, a
//! cache dir inside a watched sandbox, a comparable snapshot of a tree, the
//! merged overlay view of an image's layers and the umoci oracle.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest as _, Sha256};

use crate::common::image::Image;
use crate::common::prereq::{self, Need};
use crate::common::Registry;

/// What every test running `cvmd` against a registry needs: root (0:0
/// whiteout devices, trusted xattrs, chown, overlay mounts) and the
/// registry binary.
pub fn can_run() -> Need {
    prereq::root("whiteout devices, trusted.* xattrs, overlay mounts")?;
    prereq::registry()
}

/// A temp dir holding the cache dir (`<sandbox>/cache`) and sentinels
/// beside it, so a test can prove nothing was written outside the cache.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

const SENTINEL: &[u8] = b"untouched\n";

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("cvmd-layertest-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("cache")).expect("cache dir");
        std::fs::create_dir(dir.path().join("sibling")).expect("sibling dir");
        std::fs::write(dir.path().join("sentinel"), SENTINEL).expect("sentinel");
        std::fs::write(dir.path().join("sibling/sentinel"), SENTINEL).expect("sentinel");
        Sandbox { dir }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Nothing appeared or changed beside the cache dir.
    pub fn assert_outside_untouched(&self) {
        let names = |p: &Path| -> Vec<OsString> {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(self.dir.path()),
            ["cache", "sentinel", "sibling"],
            "something was written beside the cache dir"
        );
        assert_eq!(names(&self.dir.path().join("sibling")), ["sentinel"]);
        for s in ["sentinel", "sibling/sentinel"] {
            assert_eq!(std::fs::read(self.dir.path().join(s)).unwrap(), SENTINEL);
        }
        // The cache holds only what cvmd makes there.
        for name in names(&self.cache()) {
            let n = name.to_string_lossy();
            assert!(
                [
                    "blobs",
                    "ingest",
                    "images",
                    "layers",
                    "leases",
                    "gc.lock",
                    // The node's one early flusher (store::writeback).
                    "writeback.lock",
                    // Every workspace's host ID range (store::idranges).
                    "idranges.json",
                    "idranges.lock",
                    "idranges.d",
                    // Host probes that worked on this boot (preflight).
                    ".preflight-worked",
                    // Lazy start's chunk cache and TOC copies (src/lazy).
                    "chunks",
                ]
                .contains(&&*n),
                "unexpected {n} in the cache dir"
            );
        }
    }
}

/// Runs the real `cvmd` against a cache dir the test owns and one insecure
/// registry (HOME is the cache dir; see [`SealedCvmd`](super::cli::SealedCvmd)
/// for runs with a docker config of their own).
pub struct CvmdOnCache {
    pub cache: PathBuf,
    pub registry: String,
}

impl CvmdOnCache {
    pub fn new(cache: &Path, registry_host: &str) -> CvmdOnCache {
        CvmdOnCache {
            cache: cache.to_path_buf(),
            registry: registry_host.to_string(),
        }
    }

    /// `cvmd <args>` with a clean environment and the test's settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::common::cvmd_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.cache)
            .args(args)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(["--insecure-registries", &self.registry])
            .args(["--platform", "linux/amd64"])
            .args(["--log-level", "warn", "--log-format", "json"])
            .args(["--pull-retries", "2"])
            .stdin(Stdio::null());
        c
    }

    /// `cvmd ... run` of `reference` as a workspace of its own: state in
    /// `state`, named after that dir (runc names the container's cgroup
    /// after it, and tests run in parallel), runc as the runtime and no
    /// veth (a veth and NAT rules would touch the host's netns;
    /// tests/run/network.rs covers the network) unless `extra` says otherwise.
    pub fn workspace(&self, state: &Path, reference: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(crate::common::cvmd_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.cache)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--state-dir")
            .arg(state)
            .args(["--insecure-registries", &self.registry])
            .args(["--image", reference, "--workspace", &workspace_name(state)])
            .args(["--log-format", "text", "--log-level", "info"]);
        for (flag, default) in [("--runtime", "runc"), ("--network", "none")] {
            if !extra.contains(&flag) {
                c.args([flag, default]);
            }
        }
        c.args(extra).arg("run").stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run cvmd")
    }

    pub fn pull(&self, reference: &str, extra: &[&str]) -> Output {
        let mut args = vec!["pull", reference];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Pulls and panics with cvmd's output unless it succeeded.
    pub fn pull_ok(&self, reference: &str) -> Output {
        let out = self.pull(reference, &[]);
        assert_success(&out, &format!("cvmd pull {reference}"));
        out
    }

    /// `cvmd gc --json [extra]`, parsed.
    pub fn gc(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["gc", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_success(&out, "cvmd gc");
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("gc report {stdout:?}: {e}"))
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pull failed with exit status 1 and exactly one `cvmd: error:` line,
/// which is returned.
pub fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1:\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("cvmd: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected in:\n{stderr}");
    lines[0].to_string()
}

/// `--json` events of a pull, one object per stdout line.
pub fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l:?}: {e}")))
        .collect()
}

pub use crate::common::registry::push;

/// The record cvmd wrote for `reference` (the one whose `reference` field
/// is it), with its path.
pub fn image_record(cache: &Path, reference: &str) -> (serde_json::Value, PathBuf) {
    for e in std::fs::read_dir(cache.join("images")).expect("images dir") {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            if v["reference"].as_str() == Some(reference) {
                return (v, path);
            }
        }
    }
    panic!("no image record for {reference} in {}", cache.display())
}

/// `<cache>/layers/sha256/<hex>` of a `sha256:<hex>` diff_id.
pub fn layer_dir(cache: &Path, diff_id: &str) -> PathBuf {
    cache
        .join("layers/sha256")
        .join(diff_id.strip_prefix("sha256:").expect("sha256 digest"))
}

pub use crate::common::cli::blob_path;

pub fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(p) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read_dir {}: {e}", p.display()),
    };
    v.sort();
    v
}

/// Published layers (hex diff_ids) of a cache.
pub fn published(cache: &Path) -> Vec<String> {
    dir_names(&cache.join("layers/sha256"))
}

pub fn staging(cache: &Path) -> Vec<String> {
    dir_names(&cache.join("layers/staging"))
}

// ---------------------------------------------------------------------------
// Tree snapshots

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File { sha256: String },
    Dir,
    Symlink { target: String },
    Char { major: u64, minor: u64 },
    Block { major: u64, minor: u64 },
    Fifo,
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`); not for
    /// symlinks, whose mode means nothing.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Name and value; sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The smallest path sharing this node's inode, for regular files with
    /// more than one name in the tree.
    pub link_group: Option<String>,
}

/// Which xattrs a snapshot keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xattrs {
    /// Everything but `trusted.overlay.*` (what a merged view shows).
    NoOverlay,
    /// Everything (raw layer dirs, where the opaque marker matters).
    All,
}

/// Every entry below `root` (not `root` itself), by relative path.
pub fn snapshot(root: &Path, xattrs: Xattrs) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    walk(root, root, xattrs, &mut out, &mut inodes);
    for names in inodes.values().filter(|n| n.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for n in names {
            out.get_mut(n).unwrap().link_group = Some(first.clone());
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    which: Xattrs,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let dev = |rdev: u64| (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let kind = if ft.is_file() {
            let data = std::fs::read(&path).unwrap();
            inodes
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.clone());
            Kind::File {
                sha256: hex::encode(Sha256::digest(&data)),
            }
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink {
                target: std::fs::read_link(&path)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            }
        } else if ft.is_char_device() {
            let (major, minor) = dev(m.rdev());
            Kind::Char { major, minor }
        } else if ft.is_block_device() {
            let (major, minor) = dev(m.rdev());
            Kind::Block { major, minor }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let is_link = matches!(kind, Kind::Symlink { .. });
        out.insert(
            rel,
            Node {
                mode: if is_link { 0 } else { m.mode() & 0o7777 },
                uid: m.uid(),
                gid: m.gid(),
                xattrs: read_xattrs(&path, which),
                kind,
                link_group: None,
            },
        );
        if ft.is_dir() {
            walk(root, &path, which, out, inodes);
        }
    }
}

fn read_xattrs(path: &Path, which: Xattrs) -> Vec<(String, Vec<u8>)> {
    let mut buf = vec![0u8; 64 << 10];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Vec::new(),
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    let mut out = Vec::new();
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if which == Xattrs::NoOverlay && name.starts_with("trusted.overlay.") {
            continue;
        }
        let mut val = vec![0u8; 64 << 10];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut val[..])
            .unwrap_or_else(|e| panic!("lgetxattr {name} {}: {e}", path.display()));
        val.truncate(len);
        out.push((name, val));
    }
    out.sort();
    out
}

/// Asserts two snapshots are equal, listing every difference.
pub fn assert_same_tree(what: &str, got: &BTreeMap<String, Node>, want: &BTreeMap<String, Node>) {
    let mut diffs = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => diffs.push(format!("missing {p}: {w:?}")),
            Some(g) if g != w => diffs.push(format!("differs {p}:\n   got  {g:?}\n   want {w:?}")),
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            diffs.push(format!("extra {p}: {g:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Merged view and oracle

/// An overlay mount of an image's cached layers (top layer first in
/// `lowerdir`) with a throwaway upper/work dir; unmounted on drop.
pub struct MergedView {
    pub target: PathBuf,
    cache: PathBuf,
    scratch: tempfile::TempDir,
}

impl MergedView {
    fn cvmd(&self) -> Command {
        let mut c = Command::new(crate::common::cvmd_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--state-dir")
            .arg(self.scratch.path().join("state"))
            .args(["--pull-policy", "Never", "--log-level", "warn"]);
        c
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        let _ = self
            .cvmd()
            .args(["rootfs", "--unmount"])
            .arg(&self.target)
            .output();
    }
}

/// The rootfs `cvmd rootfs` assembles from the cached layers of
/// `reference`, in `mode` (overlay or flat), without asking the registry.
pub fn merged_view(cache: &Path, reference: &str, mode: &str) -> MergedView {
    let scratch = tempfile::Builder::new()
        .prefix("cvmd-merged-")
        .tempdir()
        .unwrap();
    let view = MergedView {
        target: scratch.path().join("merged"),
        cache: cache.to_path_buf(),
        scratch,
    };
    let out = view
        .cvmd()
        .args(["rootfs", reference])
        .arg(&view.target)
        .args(["--mode", mode])
        .output()
        .expect("run cvmd rootfs");
    assert_success(&out, "cvmd rootfs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("mode {mode}")),
        "cvmd rootfs said: {said}"
    );
    view
}

/// What umoci makes of `reference`: `skopeo copy` into an OCI layout, then
/// `umoci unpack`; returns the bundle dir (rootfs in `rootfs/`).
pub fn umoci_rootfs(reference: &str, work: &Path) -> PathBuf {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:t", layout.display()))
        .output()
        .expect("run skopeo");
    assert_success(&out, "skopeo copy");
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .output()
        .expect("run umoci");
    assert_success(&out, "umoci unpack");
    bundle
}

/// No whiteout device or whiteout name is visible in a tree.
pub fn assert_no_whiteouts(tree: &BTreeMap<String, Node>) {
    for (p, n) in tree {
        assert!(
            n.kind != (Kind::Char { major: 0, minor: 0 }),
            "whiteout device visible at {p}"
        );
        let leaf = Path::new(p).file_name().unwrap().as_bytes();
        assert!(!leaf.starts_with(b".wh."), "whiteout name visible at {p}");
    }
}

/// Nothing mounted under a `cvmd run`'s state dir and nothing left in its
/// runtime's root: what every run leaves when it has ended.
pub fn assert_state_clean(state: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(state.to_str().unwrap()),
        "a mount under {} is left",
        state.display()
    );
    let left: Vec<_> = std::fs::read_dir(state.join("runtime"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
}

/// The workspace name `CvmdOnCache::workspace` gives a run in `state`.
pub fn workspace_name(state: &Path) -> String {
    let dir = state.file_name().unwrap().to_string_lossy();
    format!("ws-{}", dir.trim_start_matches('.'))
}
