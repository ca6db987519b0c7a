//! A Debian bookworm image with systemd as PID 1, built with `debootstrap`
//! from the mirror apt already uses, and cached as one layer tar so reruns
//! on the same machine (and CI reruns) skip the ~1–2 minute build.
//!
//! The cache is keyed by [`VERSION`]: change it whenever what goes into the
//! tree changes (packages, masked units), and the next run rebuilds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header, HeaderMode};

use super::image::{Compression, Format, Image, ImageBuilder, Layer};

/// Cache key: suite, packages and the edits below.
pub const VERSION: &str = "bookworm-systemd-v1";
const SUITE: &str = "bookworm";
const INCLUDE: &str = "systemd,systemd-sysv,dbus";
/// Outlives `target/` and `cargo clean`; `CVMD_TEST_CACHE` overrides it.
const DEFAULT_CACHE_DIR: &str = "/var/cache/cvmd-tests";

/// Units masked in the image, each for a reason a container gives.
/// Empty so far: bookworm's units already carry the conditions
/// (`ConditionVirtualization=!container`, `ConditionPathIsReadWrite=/sys`)
/// that skip them under runc.
const MASKED: &[(&str, &str)] = &[];

fn cache_dir() -> PathBuf {
    std::env::var_os("CVMD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// Prints why and returns false unless debootstrap is installed (or the
/// tar is already cached).
pub fn available() -> bool {
    if cached_tar_path().exists() {
        return true;
    }
    let found = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        eprintln!("skipping: debootstrap is not installed (apt-get install debootstrap)");
        return false;
    }
    if mirror().is_none() {
        eprintln!("skipping: no Debian mirror for {SUITE} in /etc/apt/sources.list*");
        return false;
    }
    true
}

pub fn cached_tar_path() -> PathBuf {
    cache_dir().join(format!("{VERSION}.tar"))
}

/// The image: one uncompressed layer (the push is over loopback; gzip would
/// only cost time), `/sbin/init` inside, and systemd's shutdown signal as the
/// stop signal (systemd.io/CONTAINER_INTERFACE: SIGRTMIN+3 halts it).
pub fn systemd_image() -> Image {
    let tar = std::fs::read(layer_tar()).expect("read the cached bookworm layer");
    ImageBuilder::new(Format::Oci)
        .layer(Layer::from_tar(tar, Compression::None))
        .env(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .stop_signal("SIGRTMIN+3")
        .build()
}

/// The cached layer tar, built first if absent. Concurrent callers (test
/// binaries run in parallel) serialise on a lock file; the tar appears by
/// rename, so a crash never leaves a half-written one under the final name.
pub fn layer_tar() -> PathBuf {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = cached_tar_path();
    let lock = File::create(dir.join(format!("{VERSION}.lock"))).expect("lock file");
    lock.lock().expect("lock the image cache");
    if !path.exists() {
        build(&dir, &path);
    }
    path
}

fn build(dir: &Path, path: &Path) {
    let mirror = mirror().expect("a Debian mirror in /etc/apt/sources.list*");
    let work = tempfile::Builder::new()
        .prefix(&format!("{VERSION}-build-"))
        .tempdir_in(dir)
        .expect("build dir");
    let root = work.path().join("root");
    let started = std::time::Instant::now();
    eprintln!(
        "building {VERSION} with debootstrap from {mirror} (cached afterwards in {})",
        path.display()
    );
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&root)
        .arg(&mirror)
        .output()
        .expect("run debootstrap");
    // debootstrap mounts /proc, /sys and (in a container) binds /dev
    // entries into the target and unmounts them through an exit trap; if
    // it died without running it, deleting the build dir would descend into
    // the host's /dev. Detach whatever is left first.
    let left = unmount_under(&root);
    if !left.is_empty() {
        let kept = work.keep();
        panic!(
            "mounts left under {} after debootstrap: {left:?}; unmount them and remove the dir by hand",
            kept.display()
        );
    }
    assert!(
        out.status.success(),
        "debootstrap failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (unit, _why) in MASKED {
        std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system").join(unit))
            .unwrap_or_else(|e| panic!("mask {unit}: {e}"));
    }
    // debootstrap leaves the build host's name and apt caches behind.
    let _ = std::fs::remove_file(root.join("etc/hostname"));
    let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
    std::fs::create_dir_all(root.join("var/cache/apt/archives/partial")).unwrap();

    let tmp = work.path().join("layer.tar");
    let mut out = BufWriter::new(File::create(&tmp).expect("layer tar"));
    tree_to_tar(&root, &mut out);
    out.flush().unwrap();
    drop(out);
    std::fs::rename(&tmp, path).expect("publish the layer tar");
    eprintln!("built {VERSION} in {:?}", started.elapsed());
}

/// Lazily unmounts every mount at or below `dir`, deepest first; returns
/// those still there.
fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mounted = || -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(dir))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v
    };
    for p in mounted() {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    mounted()
}

/// The `URIs:` (deb822) or `deb URL` (one-line) entry apt uses for the
/// Debian suite, security and third-party sources left out.
pub fn mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(d) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = d.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        // deb822: paragraphs of `Key: value`.
        for para in text.split("\n\n") {
            let field = |k: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                continue;
            };
            if suites.split_whitespace().any(|s| s == SUITE) {
                if let Some(u) = uris.split_whitespace().next() {
                    return Some(u.to_string());
                }
            }
        }
        for l in text.lines() {
            let words: Vec<_> = l
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == SUITE {
                return Some(words[1].to_string());
            }
        }
    }
    None
}

/// Writes `root` as a layer tar: owners, modes and mtimes kept, symlinks as
/// symlinks, second and later names of a file as hardlinks; device nodes,
/// sockets and FIFOs left out (the runtime provides /dev; a layer carrying
/// device nodes is what cvmd refuses anyway).
pub fn tree_to_tar(root: &Path, out: &mut impl Write) {
    let mut tar = tar::Builder::new(out);
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("{}: {e}", full.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        // Reverse so the stack pops them in order.
        for name in names.into_iter().rev() {
            let rel = rel.join(name);
            let full = root.join(&rel);
            let meta = std::fs::symlink_metadata(&full).unwrap();
            let ft = meta.file_type();
            if ft.is_block_device() || ft.is_char_device() || ft.is_socket() || ft.is_fifo() {
                continue;
            }
            let mut h = Header::new_gnu();
            h.set_metadata_in_mode(&meta, HeaderMode::Complete);
            let key = (meta.dev(), meta.ino());
            let appended = if ft.is_dir() {
                stack.push(rel.clone());
                tar.append_data(&mut h, &rel, std::io::empty())
            } else if ft.is_symlink() {
                std::fs::read_link(&full).and_then(|t| tar.append_link(&mut h, &rel, t))
            } else if let Some(first) = seen.get(&key).filter(|_| meta.nlink() > 1) {
                h.set_entry_type(EntryType::Link);
                h.set_size(0);
                tar.append_link(&mut h, &rel, first)
            } else {
                if meta.nlink() > 1 {
                    seen.insert(key, rel.clone());
                }
                File::open(&full).and_then(|f| tar.append_data(&mut h, &rel, f))
            };
            appended.unwrap_or_else(|e| panic!("tar {}: {e}", rel.display()));
        }
    }
    tar.finish().expect("finish the layer tar");
}
