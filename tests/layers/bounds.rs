//! Disk bounds of the unpacker, through `cvmd pull` from a real registry:
//! a sparse bomb is refused by the image bound (not by the disk), holes of
//! an accepted sparse file stay holes, the free-space reserve stops an
//! unpack, and ENOSPC leaves nothing half-written. The small file systems
//! are real tmpfs mounts used as the cache dir. Memory bounds: layers that
//! once drove cvmd's memory up (a million `./` headers, directories with
//! megabyte xattr names) are generated as a stream and pulled, and cvmd's
//! peak RSS (from wait4) must stay small.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use crate::common::prereq::Need;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::image::{sparse_tar, Compression, Format, ImageBuilder, Layer, LayerBuilder};
use crate::common::layers::*;
use crate::common::Registry;

/// A tmpfs mounted on the sandbox's cache dir, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs ({options}) on {}: {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn tar_present() -> Need {
    match Command::new("tar").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => Err("GNU tar is not installed (apt-get install tar)".into()),
    }
}

struct Pulled {
    /// First: fields drop in order, and the tmpfs must be gone before the
    /// sandbox's dir is removed.
    _mount: Option<Tmpfs>,
    sandbox: Sandbox,
    out: std::process::Output,
    reference: String,
    _reg: Registry,
}

/// Pushes an image of `layers`, pulls it into the sandbox's cache (on a
/// tmpfs mounted with `tmpfs` options when given) with `env` set.
fn pull(repo: &str, layers: Vec<Layer>, tmpfs: Option<&str>, env: &[(&str, &str)]) -> Pulled {
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let mount = tmpfs.map(|o| Tmpfs::mount(&sandbox.cache(), o));
    let mut img = ImageBuilder::new(Format::Oci);
    for l in layers {
        img = img.layer(l);
    }
    let reference = push(&reg, repo, "v1", &img.build());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let mut cmd = cvmd.command(&["pull", &reference]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cvmd");
    Pulled {
        _mount: mount,
        sandbox,
        out,
        reference,
        _reg: reg,
    }
}

impl Pulled {
    /// Refused with one line holding every `want`; no layer published, no
    /// staging dir, no partial download, no image record, nothing outside.
    fn assert_refused(&self, want: &[&str]) -> String {
        let line = error_line(&self.out);
        eprintln!("refused as expected: {line}");
        assert!(line.contains(&self.reference), "names the image: {line}");
        for w in want {
            assert!(line.contains(w), "error should say {w:?}: {line}");
        }
        let cache = self.sandbox.cache();
        self.sandbox.assert_outside_untouched();
        assert!(
            published(&cache).is_empty(),
            "published: {:?}",
            published(&cache)
        );
        assert!(staging(&cache).is_empty(), "staging: {:?}", staging(&cache));
        let partial: Vec<_> = dir_names(&cache.join("ingest"))
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "partial downloads left: {partial:?}");
        assert!(dir_names(&cache.join("images")).is_empty());
        line
    }
}

#[test]
fn layers_bounds_a_60gib_sparse_bomb_is_refused_by_the_image_bound() {
    require!(can_run());
    require!(tar_present());
    let tar = sparse_tar("bomb", 60 << 30, 0, b"");
    // On a 1 GiB tmpfs: were it written out, the disk would refuse it, not
    // the bound.
    let p = pull(
        "bounds/bomb",
        vec![Layer::from_tar(tar, Compression::Gzip)],
        Some("size=1g"),
        &[],
    );
    let line = p.assert_refused(&["\"bomb\"", "CVMD_MAX_IMAGE_SIZE", "42949672960 bytes"]);
    assert!(line.contains("sha256:"), "names the layer: {line}");
}

#[test]
fn layers_bounds_the_image_bound_counts_all_layers() {
    require!(can_run());
    require!(tar_present());
    // Two layers of 30 GiB (declared) each: each within the 64 GiB layer
    // bound, together past the 40 GiB image bound.
    let a = Layer::from_tar(sparse_tar("a", 30 << 30, 0, b"a"), Compression::Gzip);
    let b = Layer::from_tar(sparse_tar("b", 30 << 30, 0, b"b"), Compression::Gzip);
    let p = pull("bounds/two", vec![a, b], Some("size=1g"), &[]);
    let line = error_line(&p.out);
    assert!(line.contains("over its layers"), "{line}");
    assert!(line.contains("CVMD_MAX_IMAGE_SIZE"), "{line}");
    // The refused layer is gone; the other may stay cached (it is fine on
    // its own), but nothing is half-written.
    let cache = p.sandbox.cache();
    assert!(published(&cache).len() <= 1);
    assert!(staging(&cache).is_empty(), "staging: {:?}", staging(&cache));
    assert!(dir_names(&cache.join("images")).is_empty());
}

#[test]
fn layers_bounds_cached_layers_count_toward_the_image_bound() {
    require!(can_run());
    require!(tar_present());
    // Image one is a 30 GiB (declared) layer; image two is that layer,
    // now cached, and another 30 GiB one: refused, though this pull
    // unpacks only 30 GiB (as a failed pull retried would).
    let a = Layer::from_tar(sparse_tar("a", 30 << 30, 0, b"a"), Compression::Gzip);
    let b = Layer::from_tar(sparse_tar("b", 30 << 30, 0, b"b"), Compression::Gzip);
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let one = push(
        &reg,
        "bounds/one",
        "v1",
        &ImageBuilder::new(Format::Oci).layer(a.clone()).build(),
    );
    let two = push(
        &reg,
        "bounds/two",
        "v1",
        &ImageBuilder::new(Format::Oci)
            .layer(a)
            .layer(b.clone())
            .build(),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    cvmd.pull_ok(&one);
    let out = cvmd.pull(&two, &[]);
    let line = error_line(&out);
    assert!(line.contains("over its layers"), "{line}");
    assert!(line.contains(&b.digest), "names the new layer: {line}");
    let cache = sandbox.cache();
    assert!(!layer_dir(&cache, &b.diff_id).exists());
    assert!(staging(&cache).is_empty(), "staging: {:?}", staging(&cache));
}

#[test]
fn layers_bounds_holes_of_a_sparse_file_stay_holes() {
    require!(can_run());
    require!(tar_present());
    let at = 3 << 30;
    let tar = sparse_tar("holey", 4 << 30, at, b"middle");
    let layer = Layer::from_tar(tar, Compression::Gzip);
    let diff_id = layer.diff_id.clone();
    let p = pull("bounds/holes", vec![layer], None, &[]);
    assert_success(&p.out, "pull of a 4 GiB sparse file");
    let file = layer_dir(&p.sandbox.cache(), &diff_id).join("root/holey");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.len(), 4 << 30, "apparent size kept");
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "holes were written: {} bytes allocated",
        meta.blocks() * 512
    );
    let mut f = std::fs::File::open(&file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    assert_eq!(&buf, b"middle");
}

#[test]
fn layers_bounds_the_cache_reserve_stops_an_unpack() {
    require!(can_run());
    // 40 MiB of file on a 64 MiB tmpfs that keeps half free.
    let layer = LayerBuilder::new()
        .file("big", &vec![7u8; 40 << 20], 0o644)
        .build(Compression::Gzip);
    let p = pull(
        "bounds/reserve",
        vec![layer],
        Some("size=64m"),
        &[("CVMD_CACHE_RESERVE", "50%")],
    );
    p.assert_refused(&[
        "\"big\"",
        "in reserve",
        "CVMD_CACHE_RESERVE",
        "50% of the file system",
    ]);
}

#[test]
fn layers_bounds_enospc_leaves_no_staging_behind() {
    require!(can_run());
    // Inodes run out a few hundred files in: a real ENOSPC from the kernel.
    let mut b = LayerBuilder::new();
    for i in 0..400 {
        b = b.file(&format!("f{i:03}"), b"x", 0o644);
    }
    let p = pull(
        "bounds/enospc",
        vec![b.build(Compression::Gzip)],
        Some("size=64m,nr_inodes=200"),
        &[("CVMD_CACHE_RESERVE", "0")],
    );
    let line = p.assert_refused(&["ran out of space or inodes", "sha256:"]);
    assert!(line.contains("No space left on device"), "{line}");
}

#[test]
fn layers_bounds_enospc_in_the_download_leaves_no_partial_blob() {
    require!(can_run());
    // 4 MiB of incompressible data on a 2 MiB cache, content only (as
    // `cvmd prefetch` of a content-only node does): the blob does not fit.
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let mount = Tmpfs::mount(&sandbox.cache(), "size=2m");
    let img = ImageBuilder::new(Format::Oci)
        .layer(Layer::random("noise", 4, 3, Compression::Gzip))
        .build();
    let reference = push(&reg, "bounds/enospc-blob", "v1", &img);
    let out = CvmdOnCache::new(&sandbox.cache(), &reg.host()).pull(&reference, &["--no-unpack"]);
    let p = Pulled {
        _mount: Some(mount),
        sandbox,
        out,
        reference,
        _reg: reg,
    };
    p.assert_refused(&["No space left on device"]);
}

/// A gzip layer written as a stream by `fill`, with its diff_id computed
/// on the way: the uncompressed tar is never held whole.
fn streamed_layer(fill: impl FnOnce(&mut tar::Builder<&mut Hashing>)) -> Layer {
    let mut out = Hashing {
        gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
        sha: <sha2::Sha256 as sha2::Digest>::new(),
    };
    {
        let mut b = tar::Builder::new(&mut out);
        fill(&mut b);
        b.finish().unwrap();
    }
    let diff_id = format!("sha256:{}", hex::encode(sha2::Digest::finalize(out.sha)));
    Layer::from_blob(out.gz.finish().unwrap(), &diff_id, Compression::Gzip)
}

struct Hashing {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    sha: sha2::Sha256,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.gz.write(buf)?;
        sha2::Digest::update(&mut self.sha, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.gz.flush()
    }
}

fn dir_header(name: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h
}

/// Runs `cvmd pull` and returns its output and peak RSS in KiB: its
/// VmHWM, read until it exits. (wait4's ru_maxrss would also count the
/// test process, whose memory the child shares between vfork and exec.)
fn pull_measured(
    cvmd: &CvmdOnCache,
    reference: &str,
    out_dir: &Path,
) -> (std::process::Output, u64) {
    let (stdout, stderr) = (out_dir.join("stdout"), out_dir.join("stderr"));
    let mut child = cvmd
        .command(&["pull", reference])
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut peak = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let hwm = crate::common::proc_status_kib(child.id(), "VmHWM").unwrap_or(0);
        peak = peak.max(hwm);
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = std::process::Output {
        status,
        stdout: std::fs::read(&stdout).unwrap(),
        stderr: std::fs::read(&stderr).unwrap(),
    };
    eprintln!("cvmd pull exited {status}, peak RSS {peak} KiB");
    (out, peak)
}

#[test]
fn layers_bounds_a_million_dot_slash_headers_keep_cvmd_small() {
    require!(can_run());
    let layer = streamed_layer(|b| {
        let h = dir_header("./");
        for _ in 0..1_000_000 {
            b.append(&h, std::io::empty()).unwrap();
        }
    });
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let img = ImageBuilder::new(Format::Oci).layer(layer).build();
    let reference = push(&reg, "bounds/dots", "v1", &img);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let (out, peak) = pull_measured(&cvmd, &reference, sandbox.dir.path());
    assert_success(&out, "pull of a layer of a million ./ headers");
    assert!(peak < 100 << 10, "cvmd's peak RSS was {} MiB", peak >> 10);
}

#[test]
fn layers_bounds_megabyte_xattr_names_are_refused_with_memory_bounded() {
    require!(can_run());
    // 300 directories, each with a trusted.overlay.* xattr of a ~1 MB name
    // (under the 1 MiB extension bound): once kept whole per directory
    // until the layer ended, and logged whole.
    let name = format!("trusted.overlay.{}", "n".repeat(1_000_000));
    let key = format!("SCHILY.xattr.{name}");
    let layer = streamed_layer(|b| {
        for i in 0..300 {
            b.append_pax_extensions([(key.as_str(), &b"y"[..])])
                .unwrap();
            b.append(&dir_header(&format!("d{i}")), std::io::empty())
                .unwrap();
        }
    });
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let img = ImageBuilder::new(Format::Oci).layer(layer).build();
    let reference = push(&reg, "bounds/xattrs", "v1", &img);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let (out, peak) = pull_measured(&cvmd, &reference, sandbox.dir.path());
    let line = error_line(&out);
    eprintln!("refused as expected: {line}");
    assert!(line.contains("\"d0\""), "names the entry: {line}");
    assert!(line.contains("XATTR_NAME_MAX"), "{line}");
    assert!(line.len() < 2048, "one short line: {} bytes", line.len());
    assert!(
        out.stderr.len() < 64 << 10,
        "cvmd logged {} bytes",
        out.stderr.len()
    );
    assert!(peak < 100 << 10, "cvmd's peak RSS was {} MiB", peak >> 10);
    let cache = sandbox.cache();
    assert!(published(&cache).is_empty());
    assert!(staging(&cache).is_empty(), "staging: {:?}", staging(&cache));
}

#[test]
fn layers_bounds_dropped_overlay_xattrs_are_counted_in_one_line() {
    require!(can_run());
    let layer = streamed_layer(|b| {
        for i in 0..1000 {
            let key = "SCHILY.xattr.trusted.overlay.redirect";
            b.append_pax_extensions([(key, &b"/etc"[..])]).unwrap();
            b.append(&dir_header(&format!("d{i}")), std::io::empty())
                .unwrap();
        }
    });
    let reg = Registry::plain().unwrap();
    let sandbox = Sandbox::new();
    let img = ImageBuilder::new(Format::Oci).layer(layer).build();
    let reference = push(&reg, "bounds/dropped", "v1", &img);
    let out = CvmdOnCache::new(&sandbox.cache(), &reg.host()).pull(&reference, &[]);
    assert_success(&out, "pull of a layer with overlay xattrs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("trusted.overlay"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for all of them: {lines:?}");
    assert!(lines[0].contains("1000"), "with the count: {}", lines[0]);
    assert!(
        lines[0].contains("trusted.overlay.redirect"),
        "and an example: {}",
        lines[0]
    );
}
