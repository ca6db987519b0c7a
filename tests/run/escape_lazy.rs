//! The escape attempts of `escape.rs`, from a workspace booted lazily from
//! an eStargz image (issue #15): its lower layers are FUSE mounts cvmd
//! serves, its file bytes come through the node's chunk cache. Every
//! known way out still fails, and the lazy parts add their own:
//!
//! - the FUSE lower dirs and the chunk cache are out of reach, from the
//!   workspace's tree and through an outer process's root, and no FUSE
//!   mount shows in the workspace's mount table;
//! - writes, chmods, chowns, xattrs and truncations of a lazily served
//!   file land in the workspace's upper dir only: the lower layer (read on
//!   the host through cvmd's mounts), the chunk cache and, once the
//!   background download is done, the published layer keep the image's
//!   bytes;
//! - reads at absurd offsets, calls a FUSE server may not implement, a
//!   32 MiB file read whole by eight readers at once: each answers, and
//!   cvmd keeps serving.
//!
//! Needs what `escape.rs` and `lazy.rs` need (root, runc, gcc with a static
//! libc, nsenter, busybox-static, /dev/fuse, docker-registry).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::escape::{answer, busybox_image_with, try_every_way_out, Findings, Workspace};
use crate::common::image::{pseudo_random, LayerBuilder};
use crate::common::layers::*;
use crate::common::Registry;

/// The workspace's image source, from `cvmctl status`.
fn source(ws: &Workspace) -> String {
    let out = Command::new(crate::common::cvmctl_bin())
        .arg("--socket")
        .arg(ws.state.path().join("cvmd.sock"))
        .args(["status", "--json"])
        .output()
        .expect("cvmctl status");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|s| s["image"]["source"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every chunk in the chunk cache and its content's digest.
fn chunks(cache: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(cache.join("chunks/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                sha256(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect()
}

/// `rel` in each lazy layer of the workspace that has it, as cvmd's own
/// mount namespace shows it (through its `/proc/PID/root`).
fn in_lazy_layers(ws: &Workspace, rel: &str) -> Vec<PathBuf> {
    let lazy = ws
        .state
        .path()
        .join("workspaces")
        .join(ws.name())
        .join("lazy");
    let root = PathBuf::from(format!("/proc/{}/root", ws.cvmd.id()));
    (0..8)
        .map(|i| {
            root.join(lazy.strip_prefix("/").unwrap())
                .join(i.to_string())
                .join(rel)
        })
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn escapes_fail_from_a_lazily_started_busybox_image_root() {
    require!(super::lazy::prerequisites());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(1 << 20, 31);
    let victim = pseudo_random(256 << 10, 32);
    let zeros = vec![0u8; 32 << 20];
    let data = LayerBuilder::new()
        .dir("data", 0o755)
        .file("data/big", &big, 0o644)
        .file("data/victim", &victim, 0o644)
        .file("data/zeros", &zeros, 0o644);
    let source_ref = push(
        &reg,
        "escape/lazy-src",
        "v1",
        &busybox_image_with(Some(data)),
    );
    let target = format!("{}/escape/lazy:v1", reg.host());
    super::lazy::convert(&reg, &source_ref, &target, "estargz");
    // Spans at 1 MiB/s a request; the background pull's whole-blob
    // downloads held at 1 KiB/s until the end: the workspace is served on
    // demand throughout the attempts.
    let link = super::lazy::slow_link(&reg, &target, 1 << 20);
    link.proxy.throttle_whole_blobs(1 << 10);
    let mut ws = require!(Workspace::start(
        &link.sandbox,
        &link.proxy.host(),
        &link.reference,
        false
    ));
    let src = source(&ws);
    assert!(
        src.contains("lazily") && !src.contains("complete"),
        "not served on demand: {src:?}"
    );
    let cache = link.sandbox.cache();
    ws.secrets.more.push((
        "FUSE lower dirs",
        ws.state
            .path()
            .join("workspaces")
            .join(ws.name())
            .join("lazy"),
    ));
    ws.secrets.more.push(("chunk cache", cache.join("chunks")));

    // Every file in the chunk cache first: from here on the attempts'
    // reads and writes can only use the chunks, not add to them.
    let began = Instant::now();
    let read = ws.exec(&[
        "/bin/sh",
        "-c",
        "cat /bin/busybox /etc/passwd /data/big /data/victim /data/zeros > /dev/null && echo read-ok",
    ]);
    assert!(read.contains("read-ok"), "reading the image: {read}");
    eprintln!("the image read on demand in {:?}", began.elapsed());
    let src = source(&ws);
    assert!(
        !src.contains("complete"),
        "the image completed before the attempts: {src:?}"
    );
    let chunks_before = chunks(&cache);
    assert!(!chunks_before.is_empty(), "no chunk was cached");
    for (name, got) in &chunks_before {
        assert_eq!(name, got, "a chunk holds other bytes than its name's");
    }

    try_every_way_out(&ws);

    let mut f = Findings::default();
    // No FUSE mount in the workspace's own mount table; the dirs its
    // overlay names (the upper and work dirs by their paths on the host)
    // do not exist in its tree.
    let info = ws.exec(&["cat", "/proc/self/mountinfo"]);
    for line in info.lines() {
        f.check(
            !line.contains(" - fuse"),
            format!("a FUSE mount in the workspace: {line}"),
        );
        for opt in line.split([' ', ',']) {
            let Some(dirs) = ["lowerdir+=", "lowerdir=", "upperdir=", "workdir="]
                .iter()
                .find_map(|p| opt.strip_prefix(p))
            else {
                continue;
            };
            eprintln!("the workspace's overlay: {line}");
            // A lower dir outside the reader's root shows as "/" (d_path
            // from the workspace's root): nothing to try there.
            for dir in dirs.split(':').filter(|d| d.starts_with('/') && *d != "/") {
                let out = ws.attempt(&["read", dir]);
                f.answer(&out, &format!("open {dir}"), &["ENOENT"]);
            }
        }
    }

    // Absurd reads and unimplemented calls answer, and cvmd keeps serving.
    for file in ["/data/zeros", "/data/big"] {
        let began = Instant::now();
        let out = ws.attempt(&["lazy-reads", file]);
        f.check(
            began.elapsed() < Duration::from_secs(60),
            format!("the reads of {file} took {:?}", began.elapsed()),
        );
        f.answer(&out, "open the lazily served file", &["ok"]);
        f.answer(&out, "pread at 2^40", &["ok"]);
        f.answer(&out, "pread at 2^62", &["ok"]);
        f.answer(&out, "pread at -1", &["EINVAL"]);
        f.answer(&out, "eight whole reads at once", &["ok"]);
        // The lower layers are read-only: no flag sticks to them.
        f.answer(
            &out,
            "ioctl FS_IOC_SETFLAGS immutable",
            &["EPERM", "ENOTTY", "EROFS", "EACCES", "EINVAL", "EOPNOTSUPP"],
        );
        for what in [
            "lseek SEEK_DATA at 2^40",
            "lseek SEEK_HOLE at 0",
            "readahead of 2^40 bytes",
            "posix_fadvise WILLNEED",
            "ioctl FS_IOC_GETFLAGS",
            "flock",
            "mmap shared",
            "fsync",
        ] {
            answer(&out, what);
        }
    }
    f.check(
        ws.cvmd.try_wait().unwrap().is_none(),
        "cvmd ended during the reads".into(),
    );
    let src = source(&ws);
    f.check(
        src.contains("lazily"),
        format!("cvmd no longer answers its status: {src:?}"),
    );

    // Writes go to the upper dir.
    let out = ws.attempt(&["clobber", "/data/victim"]);
    for what in [
        "open the lazily served file for writing",
        "write over its first bytes",
        "fchmod 06777",
        "ftruncate to 7 bytes",
        "truncate by path to 3 bytes",
    ] {
        f.answer(&out, what, &["ok"]);
    }
    let seen = ws.exec(&["cat", "/data/victim"]);
    f.check(
        seen == "hos",
        format!("the workspace does not see its own write: {seen:?}"),
    );
    let lower = in_lazy_layers(&ws, "data/victim");
    f.check(
        lower.len() == 1,
        format!("data/victim in one lazy layer: {lower:?}"),
    );
    for path in &lower {
        use std::os::unix::fs::MetadataExt;
        let bytes = std::fs::read(path).unwrap();
        f.check(
            sha256(&bytes) == sha256(&victim),
            format!("the lazy layer's {} changed", path.display()),
        );
        let meta = std::fs::metadata(path).unwrap();
        f.check(
            meta.mode() & 0o7777 == 0o644,
            format!("the lazy layer's mode changed: {:o}", meta.mode()),
        );
        f.check(
            xattr_names(path).iter().all(|n| n != "user.cvmd"),
            "the lazy layer got the workspace's xattr".into(),
        );
    }
    f.check(
        chunks(&cache) == chunks_before,
        "the chunk cache changed under the workspace's writes".into(),
    );

    // Once the link is back, the background pull publishes the image's
    // bytes, not the workspace's.
    link.proxy.throttle_whole_blobs(0);
    link.proxy.throttle_blobs(0);
    let complete = crate::common::wait_until(Duration::from_secs(90), || {
        source(&ws).contains("complete in cvmd's cache")
    });
    f.check(complete, format!("never completed: {}", source(&ws)));
    let published: Vec<PathBuf> = published(&cache)
        .iter()
        .map(|hex| {
            cache
                .join("layers/sha256")
                .join(hex)
                .join("root/data/victim")
        })
        .filter(|p| p.exists())
        .collect();
    f.check(
        published.len() == 1,
        format!("data/victim in one published layer: {published:?}"),
    );
    for path in &published {
        f.check(
            sha256(&std::fs::read(path).unwrap()) == sha256(&victim),
            format!(
                "the published {} holds the workspace's bytes",
                path.display()
            ),
        );
    }
    for (name, got) in chunks(&cache) {
        f.check(name == got, format!("chunk {name} holds {got}"));
    }
    assert!(
        f.0.is_empty(),
        "ways out of a lazily started workspace:\n{}",
        f.0.join("\n")
    );
    drop(ws);
    link.sandbox.assert_outside_untouched();
}

/// The names of `path`'s extended attributes (llistxattr).
fn xattr_names(path: &Path) -> Vec<String> {
    xattr_list(path).unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()))
}

fn xattr_list(path: &Path) -> std::io::Result<Vec<String>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: `c` is a NUL-terminated path and `buf` a writable buffer of
    // the length passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}
