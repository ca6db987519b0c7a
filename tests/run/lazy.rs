//! Lazy start under real runc: an eStargz or zstd:chunked image (made by
//! `cvmd convert` on a real registry) boots from FUSE lower dirs before it
//! is downloaded,
//! reads the same bytes a full pull gives, completes in the background so
//! the next start is warm; a corrupted chunk is EIO (never wrong bytes,
//! nothing published) and a vanished registry is a bounded EIO, with the
//! workspace still stoppable.
//!
//! Needs root, runc, busybox-static, /dev/fuse and docker-registry; skips
//! with a reason otherwise (panics under CI=true).

use std::time::Duration;

use crate::common::api::{start_cvmd, text, Running};
use crate::common::busybox::busybox_layer;
use crate::common::image::{pseudo_random, Compression, Format, Image, ImageBuilder, LayerBuilder};
use crate::common::layers::*;
use crate::common::prereq;
use crate::common::proxy::FaultProxy;
use crate::common::Registry;

pub(super) fn prerequisites() -> prereq::Need {
    can_run()?;
    prereq::runc()?;
    prereq::busybox()?;
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Err(format!("needs /dev/fuse: {e}"));
    }
    Ok(())
}

/// busybox, a big file in chunks, and a second layer with a whiteout and
/// an opaque dir: what the overlay must honour over FUSE lowers.
fn image(big: &[u8]) -> Image {
    ImageBuilder::new(Format::Oci)
        .layer(
            busybox_layer(&["sh", "sleep", "cat", "ls", "md5sum", "stat", "wc", "cut"])
                .dir("etc", 0o755)
                .file("etc/os-release", b"ID=cvmd-lazy\n", 0o644)
                .file("etc/shadow", b"root:*:1::::::\n", 0o600)
                .dir("tmp", 0o1777)
                .dir("var", 0o755)
                .dir("var/cache", 0o755)
                .file("var/cache/old", b"old", 0o644)
                .dir("data", 0o755)
                .owner(1000, 1000)
                .file("data/big", big, 0o640)
                .owner(0, 0)
                .build(Compression::Gzip),
        )
        .layer(
            LayerBuilder::new()
                .whiteout("etc/shadow")
                .opaque("var/cache")
                .file("var/cache/new", b"new", 0o644)
                .build(Compression::Gzip),
        )
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1; done",
        ])
        .build()
}

/// Pushes the image and its eStargz copy (small chunks: the big file spans
/// many); returns the copy's reference.
fn converted(reg: &Registry, big: &[u8]) -> String {
    converted_as(reg, big, "estargz")
}

/// The image's copy in `format` (`estargz`, `zstd:chunked`), pushed as
/// `lazy/<repo>:v1` (repo: the format, `:` as `-`).
fn converted_as(reg: &Registry, big: &[u8], format: &str) -> String {
    let source = push(reg, "lazy/src", "v1", &image(big));
    let target = format!("{}/{}:v1", reg.host(), repo_of(format));
    convert(reg, &source, &target, format);
    target
}

fn repo_of(format: &str) -> String {
    format!("lazy/{}", format.replace(':', "-"))
}

/// `cvmd convert SOURCE TARGET --format FORMAT` with 64 KiB chunks, on a
/// cache of its own.
pub(super) fn convert(reg: &Registry, source: &str, target: &str, format: &str) {
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd.run(&[
        "convert",
        source,
        target,
        "--chunk-size",
        "65536",
        "--format",
        format,
    ]);
    assert_success(&out, "cvmd convert");
}

/// A node reaching the registry through a slow link: the fault proxy
/// answering blobs at `bytes_per_sec`, and a fresh cache behind it.
pub(super) struct SlowLink {
    pub(super) proxy: FaultProxy,
    /// `reference` as reached through the proxy.
    pub(super) reference: String,
    pub(super) sandbox: Sandbox,
    pub(super) cvmd: CvmdOnCache,
}

pub(super) fn slow_link(reg: &Registry, reference: &str, bytes_per_sec: u64) -> SlowLink {
    let proxy = FaultProxy::start(&reg.url());
    proxy.throttle_blobs(bytes_per_sec);
    let reference = reference.replace(&reg.host(), &proxy.host());
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());
    SlowLink {
        proxy,
        reference,
        sandbox,
        cvmd,
    }
}

fn sh(ws: &Running, script: &str) -> std::process::Output {
    ws.run(&["exec", "--", "/bin/sh", "-c", script])
}

fn ok(ws: &Running, script: &str) -> String {
    let out = sh(ws, script);
    assert_eq!(out.status.code(), Some(0), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn md5(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("md5sum")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// GETs of a manifest through `proxy` (by tag or digest).
fn manifest_gets(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/"))
        .count()
}

fn source_of(ws: &Running) -> String {
    ws.status()["image"]["source"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_estargz_image_boots_lazily_reads_true_bytes_and_completes_in_the_cache() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(3 << 20, 11);
    let reference = converted(&reg, &big);
    // A slow link (each blob answer at 1 MB/s): the whole image takes
    // seconds, the files a start reads far less.
    let SlowLink {
        proxy,
        reference,
        sandbox: _sandbox,
        cvmd,
    } = slow_link(&reg, &reference, 1 << 20);

    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    assert!(
        source_of(&ws).contains("lazily: 2 of 2 layers"),
        "running before the download ended: {}",
        ws.status()
    );
    // Only spans were asked for so far, beside the full download.
    assert!(proxy.saw_range(), "no Range request");
    // Through the workspace's user namespace (ID-mapped FUSE lowers).
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    assert_eq!(
        ok(&ws, "stat -c '%u:%g %a %s' /data/big"),
        format!("1000:1000 640 {}", big.len())
    );
    assert_eq!(ok(&ws, "cat /etc/os-release"), "ID=cvmd-lazy");
    assert_eq!(ok(&ws, "ls /var/cache"), "new", "opaque dir over FUSE");
    assert_ne!(
        sh(&ws, "ls /etc/shadow").status.code(),
        Some(0),
        "whiteout over FUSE"
    );
    assert_eq!(ok(&ws, "ls /"), ok(&ws, "ls /"), "stable listing");
    // The rest downloads while it runs, then the layers are the cache's.
    assert!(
        crate::common::wait_until(Duration::from_secs(60), || {
            source_of(&ws).contains("complete in cvmd's cache")
        }),
        "never completed: {}",
        ws.status()
    );
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    // The background download completes the image the start resolved.
    assert_eq!(manifest_gets(&proxy), 1, "{:?}", proxy.requests());
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "stopped on SIGTERM: {stderr}");
    assert!(
        stderr.contains("lazy start: 2 of 2 layers"),
        "says it: {stderr}"
    );

    // The next start on this node is a warm one.
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    assert_eq!(source_of(&ws), "cvmd's cache");
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

/// One corrupted byte in the registry's copy of the eStargz blob, inside
/// the big file's data: reading that file is EIO, never other bytes; the
/// rest of the image reads; the background pull refuses the blob, so the
/// layer never reaches the cache; the workspace still stops cleanly.
#[test]
fn a_corrupted_chunk_is_an_io_error_and_nothing_is_published() {
    require!(prerequisites());
    corrupted_chunk_is_an_io_error("estargz");
}

/// The same for a zstd:chunked copy: the corrupted byte is inside one
/// chunk's zstd frame.
#[test]
fn a_corrupted_zstd_chunked_chunk_is_an_io_error_and_nothing_is_published() {
    require!(prerequisites());
    corrupted_chunk_is_an_io_error("zstd:chunked");
}

fn corrupted_chunk_is_an_io_error(format: &str) {
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(1 << 20, 12);
    let reference = converted_as(&reg, &big, format);
    // The copy's first layer, in the registry's storage.
    let (_, _, manifest) = crate::common::block_on(reg.client().get_manifest(
        &repo_of(format),
        "v1",
        Some("application/vnd.oci.image.manifest.v1+json"),
    ))
    .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let hex = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    let blob = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).unwrap();
    // The big file comes last in the layer, before the TOC: 400 KiB
    // before the end is inside its data.
    let at = bytes.len() - (400 << 10);
    bytes[at] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();

    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    let read = sh(&ws, "cat /data/big | wc -c");
    let seen = String::from_utf8_lossy(&read.stdout).trim().to_string();
    assert!(
        read.status.code() != Some(0) || seen != big.len().to_string(),
        "the corrupted file read whole: {}",
        text(&read)
    );
    assert!(
        text(&read).contains("I/O error") || text(&read).contains("Input/output error"),
        "EIO: {}",
        text(&read)
    );
    assert_eq!(ok(&ws, "cat /etc/os-release"), "ID=cvmd-lazy");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !source_of(&ws).contains("complete"),
        "a corrupt blob completed: {}",
        ws.status()
    );
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "stopped on SIGTERM: {stderr}");
    assert!(
        stderr.contains("data/big") && stderr.contains("EIO"),
        "one line names the file: {stderr}"
    );
    assert!(
        stderr.contains("background download failed"),
        "the full pull refused the blob: {stderr}"
    );
    let layers = sandbox.cache().join("layers");
    let published = walk_files(&layers).iter().any(|p| p.ends_with("data/big"));
    assert!(!published, "the corrupt layer was published");
}

/// The registry goes away after the start: a file never read is EIO
/// within the deadline (not a hang), and the workspace stops.
#[test]
fn a_vanished_registry_is_a_bounded_io_error() {
    require!(prerequisites());
    let mut reg = Registry::plain().unwrap();
    // Beyond what a read-ahead from busybox (which comes first) can reach,
    // and ~24 s of background download at 1 MB/s: never done in time.
    let big = pseudo_random(24 << 20, 13);
    let reference = converted(&reg, &big);
    // Slow enough that the background download (which waits for the
    // boot's reads to settle) is not done when the registry goes.
    let SlowLink {
        proxy: _proxy,
        reference,
        sandbox: _sandbox,
        cvmd,
    } = slow_link(&reg, &reference, 1 << 20);
    let ws = start_cvmd(
        &cvmd,
        &reference,
        &["--cache-reserve", "0", "--lazy-deadline", "3"],
    );
    ws.wait_for("running", |s| s["phase"] == "running");
    let events = ws
        .ctl(&["events", "-f", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // What an exec of the shell reads is in the chunk cache from here on.
    ok(&ws, "true");
    reg.stop();
    let began = std::time::Instant::now();
    let read = sh(&ws, "cat /data/big > /dev/null");
    if read.status.code() == Some(0) {
        let status = ws.status();
        let (_, stderr) = ws.finish();
        panic!("the file read whole: {status}\n{stderr}");
    }
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "took {:?}",
        began.elapsed()
    );
    // The stop must still work. The workspace's own programs may die of
    // a page they can no longer fetch (SIGBUS/SIGSEGV), as on a machine
    // whose disk failed: cvmd reports that status and ends.
    let began = std::time::Instant::now();
    let (code, stderr) = ws.finish();
    assert!(code.is_some(), "cvmd itself died of a signal: {stderr}");
    assert!(began.elapsed() < Duration::from_secs(30), "stop hung");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("reading data/big failed (EIO)"),
        "one line names the file: {stderr}"
    );
    // The stall is an event too, for whoever follows the workspace.
    let events = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"warning\"") && l.contains("data/big")),
        "no warning event names the file: {events}\nstderr: {stderr}"
    );
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk_files(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// Two workspaces of one node (one cache) start the same eStargz image
/// lazily and read the same big file at once: each span of it is fetched
/// from the registry once for the node (the chunk cache is shared, and a
/// fetch in flight in one cvmd is waited for by the other).
#[test]
fn two_workspaces_on_one_node_fetch_each_span_once() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(2 << 20, 14);
    let reference = converted(&reg, &big);
    let SlowLink {
        proxy,
        reference,
        sandbox: _sandbox,
        cvmd,
    } = slow_link(&reg, &reference, 512 << 10);
    let a = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    let b = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    a.wait_for("running", |s| s["phase"] == "running");
    b.wait_for("running", |s| s["phase"] == "running");
    let sums = std::thread::scope(|s| {
        let ta = s.spawn(|| ok(&a, "md5sum /data/big | cut -c1-32"));
        let tb = s.spawn(|| ok(&b, "md5sum /data/big | cut -c1-32"));
        [ta.join().unwrap(), tb.join().unwrap()]
    });
    assert_eq!(sums, [md5(&big), md5(&big)]);
    // Spans are closed ranges (`bytes=A-B`); the background pulls' resumes
    // are open ones.
    let mut spans: Vec<(String, String)> = proxy
        .requests()
        .into_iter()
        .filter_map(|r| {
            let range = r.range?;
            (!range.ends_with('-')).then_some((r.path, range))
        })
        .collect();
    assert!(!spans.is_empty(), "no span was fetched");
    spans.sort();
    let twice: Vec<_> = spans.windows(2).filter(|w| w[0] == w[1]).collect();
    assert!(twice.is_empty(), "fetched twice: {twice:?}");
    for ws in [a, b] {
        let (code, stderr) = ws.finish();
        assert_eq!(code, Some(0), "{stderr}");
    }
}

/// cvmd killed with SIGKILL while its workspace runs on lazy layers (the
/// FUSE server gone with it), then started again on the same state dir:
/// the stale mounts are cleared, the workspace boots again and reads true
/// bytes, and it stops cleanly.
#[test]
fn a_sigkilled_lazy_start_boots_again() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(1 << 20, 15);
    let reference = converted(&reg, &big);
    let SlowLink {
        proxy,
        reference,
        sandbox: _sandbox,
        cvmd,
    } = slow_link(&reg, &reference, 256 << 10);
    let extra = ["--cache-reserve", "0"];
    let ws = start_cvmd(&cvmd, &reference, &extra);
    ws.wait_for("running", |s| s["phase"] == "running");
    assert!(source_of(&ws).contains("lazily"), "{}", ws.status());
    let (ws, _) = ws.kill_and_restart(&cvmd, &reference, &extra);
    let up = crate::common::wait_until(Duration::from_secs(60), || {
        let out = ws.run(&["status", "--json"]);
        out.status.code() != Some(0)
            || serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|s| s["phase"] == "running")
    });
    if !up || ws.run(&["status"]).status.code() != Some(0) {
        let (code, stderr) = ws.finish();
        panic!("the second start did not run ({code:?}): {stderr}");
    }
    proxy.throttle_blobs(0);
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "stopped on SIGTERM: {stderr}");
}

/// The example systemd image's eStargz variant (`images/build.sh
/// --estargz`) boots lazily to systemd's `running` (or `degraded`) while
/// the image still downloads over a slow link, and stops on SIGTERM.
#[test]
fn the_example_systemd_image_boots_lazily() {
    require!(prerequisites());
    require!(crate::common::debootstrap::available());
    let reg = Registry::plain().unwrap();
    let reference = crate::common::debootstrap::build_and_push_estargz(
        "systemd",
        &format!("{}/examples", reg.host()),
    );
    assert!(reference.ends_with("-estargz"), "{reference}");
    systemd_boots_lazily(&reg, &reference);
}

/// The same for its zstd:chunked variant (`images/build.sh --zstd-chunked`).
#[test]
fn the_example_systemd_image_boots_lazily_from_zstd_chunked() {
    require!(prerequisites());
    require!(crate::common::debootstrap::available());
    let reg = Registry::plain().unwrap();
    let reference = crate::common::debootstrap::build_and_push_zstd_chunked(
        "systemd",
        &format!("{}/examples", reg.host()),
    );
    assert!(reference.ends_with("-zstd-chunked"), "{reference}");
    systemd_boots_lazily(&reg, &reference);
}

fn systemd_boots_lazily(reg: &Registry, reference: &str) {
    // The ~60 MB layer takes ~15 s whole: systemd must not wait for it.
    let SlowLink {
        proxy: _proxy,
        reference,
        sandbox: _sandbox,
        cvmd,
    } = slow_link(reg, reference, 4 << 20);
    let began = std::time::Instant::now();
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    let mut last = String::new();
    let booted = crate::common::wait_until(Duration::from_secs(90), || {
        let out = ws.run(&["exec", "--", "systemctl", "is-system-running"]);
        last = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if last == "running" || last == "degraded" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
        false
    });
    assert!(booted, "systemd is {last:?}: {}", ws.status());
    eprintln!(
        "systemd {last} after {:?}: {}",
        began.elapsed(),
        source_of(&ws)
    );
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "stopped on SIGTERM: {stderr}");
    assert!(
        stderr.contains("lazy start: 1 of 1 layers"),
        "started lazily: {stderr}"
    );
}

/// Every layer as the lazy mount serves it (files read through FUSE,
/// chunk by chunk from the registry) equals the same layer as the full
/// pull unpacked it: kinds, modes, owners, xattrs (the opaque marker
/// too), device numbers, hardlinks and every file's sha256.
#[test]
fn each_lazy_layer_is_the_full_unpacks_tree() {
    require!(prerequisites());
    lazy_layers_are_the_full_unpacks_trees("estargz", &|reg, source, target| {
        convert(reg, source, target, "estargz")
    });
}

/// The same for a zstd:chunked copy (each chunk a zstd frame, the TOC in
/// a skippable frame the full pull's decoder skips): it boots lazily,
/// reads true bytes, and each layer equals its full unpack.
#[test]
fn a_zstd_chunked_image_boots_lazily_and_each_layer_is_the_full_unpacks_tree() {
    require!(prerequisites());
    lazy_layers_are_the_full_unpacks_trees("zstd:chunked", &|reg, source, target| {
        convert(reg, source, target, "zstd:chunked")
    });
}

/// The same for a zstd:chunked copy written by another tool: skopeo's
/// (containers/image), with the older annotation names, the 40-byte
/// footer and content-defined chunks.
#[test]
fn a_zstd_chunked_image_from_skopeo_boots_lazily_and_each_layer_is_the_full_unpacks_tree() {
    require!(prerequisites());
    require!(prereq::tool("skopeo"));
    lazy_layers_are_the_full_unpacks_trees("skopeo-zstd-chunked", &|_, source, target| {
        let out = std::process::Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-compress",
                "--dest-compress-format",
                "zstd:chunked",
            ])
            .arg(format!("docker://{source}"))
            .arg(format!("docker://{target}"))
            .output()
            .expect("run skopeo");
        assert_success(&out, "skopeo copy --dest-compress-format zstd:chunked");
    });
}

/// `copy(registry, source, target)` makes the lazily startable copy.
fn lazy_layers_are_the_full_unpacks_trees(format: &str, copy: &dyn Fn(&Registry, &str, &str)) {
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(600 << 10, 16);
    let image = ImageBuilder::new(Format::Oci)
        .layer(
            busybox_layer(&["sh", "sleep"])
                .dir("etc", 0o755)
                .file("etc/os-release", b"ID=cvmd-lazy\n", 0o644)
                .file("etc/shadow", b"root:*:1::::::\n", 0o600)
                .dir("usr", 0o755)
                .dir("usr/bin", 0o755)
                .file("usr/bin/big", &big, 0o4755)
                .hardlink("usr/bin/big-alias", "usr/bin/big")
                .symlink("sbin", "usr/bin")
                .dir("dev", 0o755)
                .char_device("dev/null", 1, 3, 0o666)
                .block_device("dev/loop0", 7, 0, 0o660)
                .dir("run", 0o755)
                .fifo("run/initctl", 0o600)
                .dir("tmp", 0o1777)
                .dir("var", 0o755)
                .dir("var/cache", 0o755)
                .file("var/cache/old", b"old", 0o644)
                .owner(1000, 100)
                .dir("home", 0o750)
                .file_with_xattrs("home/notes", b"hi", 0o640, &[("user.lang", b"en")])
                .owner(0, 0)
                .build(Compression::Gzip),
        )
        .layer(
            LayerBuilder::new()
                .whiteout("etc/shadow")
                .opaque("var/cache")
                .file("var/cache/new", b"new", 0o644)
                .file("etc/motd", b"hello\n", 0o644)
                .build(Compression::Gzip),
        )
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1; done",
        ])
        .build();
    let source = push(&reg, "lazy/tree", "v1", &image);
    let target = format!("{}/lazy/tree-{}:v1", reg.host(), format.replace(':', "-"));
    copy(&reg, &source, &target);
    let SlowLink {
        proxy: _proxy,
        reference,
        sandbox,
        cvmd,
    } = slow_link(&reg, &target, 1 << 20);
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    assert!(
        source_of(&ws).contains("lazily: 2 of 2 layers"),
        "{format}: not lazy: {}",
        ws.status()
    );
    // Through the workspace, not only the mount: the shell's builtin read.
    assert_eq!(
        ok(&ws, "read line < /etc/os-release; echo $line"),
        "ID=cvmd-lazy"
    );
    let lazy_dir = ws
        .state
        .path()
        .join("workspaces")
        .join(crate::common::layers::workspace_name(ws.state.path()))
        .join("lazy");
    let lazy: Vec<_> = (0..2)
        .map(|i| snapshot(&lazy_dir.join(i.to_string()), Xattrs::All))
        .collect();
    assert!(
        !source_of(&ws).contains("complete"),
        "the layers were read before the download ended: {}",
        ws.status()
    );
    assert!(
        crate::common::wait_until(Duration::from_secs(60), || {
            source_of(&ws).contains("complete in cvmd's cache")
        }),
        "never completed: {}",
        ws.status()
    );
    let cache = sandbox.cache();
    let full: Vec<_> = published(&cache)
        .iter()
        .map(|hex| {
            snapshot(
                &cache.join("layers/sha256").join(hex).join("root"),
                Xattrs::All,
            )
        })
        .collect();
    assert_eq!(full.len(), 2, "two layers published");
    for (i, tree) in lazy.iter().enumerate() {
        assert!(tree.contains_key("usr/bin/big") || tree.contains_key("var/cache/new"));
        assert!(
            full.contains(tree),
            "lazy layer {i} differs from every unpacked layer:\nlazy {tree:#?}\nfull {full:#?}"
        );
    }
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "{stderr}");
}

/// A manifest whose TOC digest annotation does not match the layer's TOC
/// (tampered, or a broken converter): no lazy mount, one warning line
/// naming the layer and why, and the start goes on as a full pull, which
/// checks every digest.
#[test]
fn a_toc_that_is_not_the_promised_one_falls_back_to_a_full_pull() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(256 << 10, 17);
    let reference = converted(&reg, &big);
    let client = reg.client();
    let (_, _, manifest) = crate::common::block_on(client.get_manifest(
        "lazy/estargz",
        "v1",
        Some("application/vnd.oci.image.manifest.v1+json"),
    ))
    .unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let forged = format!("sha256:{}", "ab".repeat(32));
    manifest["layers"][0]["annotations"]["containerd.io/snapshot/stargz/toc.digest"] =
        serde_json::Value::String(forged.clone());
    crate::common::block_on(client.push_manifest_raw(
        "lazy/estargz",
        "forged",
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    ))
    .unwrap();
    let reference = reference.replace(":v1", ":forged");
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    assert_eq!(source_of(&ws), "registry, into cvmd's cache");
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lazy start: refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one line: {stderr}");
    assert!(
        refused[0].contains(&forged[7..19]) || refused[0].contains("digest"),
        "says why: {}",
        refused[0]
    );
    assert!(
        !stderr.contains("served on demand"),
        "mounted lazily: {stderr}"
    );
}

/// A token-auth registry whose tokens die after 2 s: the credentials are
/// checked before anything is mounted, and a read long after the start
/// renews the token instead of failing.
#[test]
fn a_lazy_workspace_renews_its_token_while_it_reads() {
    use crate::common::token::TokenConfig;
    const USER: &str = "lazy";
    const PASS: &str = "pw-Lazy-never-shown";
    require!(prerequisites());
    let cfg = TokenConfig::new()
        .user(USER, PASS)
        .expires_in(2)
        .enforce_expiry(true);
    let reg = Registry::token(cfg).expect("registry");
    let big = pseudo_random(1 << 20, 18);
    let source = push(&reg, "team/src", "v1", &image(&big));
    let target = format!("{}/team/lazy:v1", reg.host());
    let proxy = FaultProxy::start(&reg.url());
    proxy.throttle_blobs(256 << 10);
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("config.json");
    let auth = serde_json::json!({"username": USER, "password": PASS});
    std::fs::write(
        &secret,
        serde_json::json!({"auths": {reg.host(): auth, proxy.host(): auth}}).to_string(),
    )
    .unwrap();
    let secret = secret.to_str().unwrap();
    let sandbox = Sandbox::new();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd.run(&["convert", &source, &target, "--pull-secret", secret]);
    assert_success(&out, "cvmd convert");

    // Without credentials: refused before anything is mounted.
    let reference = target.replace(&reg.host(), &proxy.host());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    let (code, stderr, ended) = ws.wait_exit(Duration::from_secs(30));
    assert!(ended, "a start without credentials kept running: {stderr}");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("requires authentication"), "{stderr}");
    assert!(!stderr.contains("Mounting"), "mounted: {stderr}");

    let ws = start_cvmd(
        &cvmd,
        &reference,
        &["--cache-reserve", "0", "--pull-secret", secret],
    );
    ws.wait_for("running", |s| s["phase"] == "running");
    assert!(source_of(&ws).contains("lazily"), "{}", ws.status());
    // Every token issued so far has expired.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(PASS), "the password was logged");
}

/// The usual cold start, an image without TOCs under `CVMD_LAZY=auto`:
/// lazy start finds nothing to serve and the full pull starts from what it
/// resolved, so the registry is asked for the manifest once.
#[test]
fn a_plain_image_is_resolved_once_when_lazy_start_declines_it() {
    require!(prerequisites());
    let reg = Registry::plain().unwrap();
    let big = pseudo_random(64 << 10, 19);
    let source = push(&reg, "lazy/plain", "v1", &image(&big));
    let SlowLink {
        proxy,
        reference,
        sandbox: _sandbox,
        cvmd,
    } = slow_link(&reg, &source, 64 << 20);
    let ws = start_cvmd(&cvmd, &reference, &["--cache-reserve", "0"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    assert_eq!(source_of(&ws), "registry, into cvmd's cache");
    assert_eq!(ok(&ws, "md5sum /data/big | cut -c1-32"), md5(&big));
    assert_eq!(manifest_gets(&proxy), 1, "{:?}", proxy.requests());
    assert!(!proxy.saw_range(), "a plain image was read in spans");
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "{stderr}");
}
