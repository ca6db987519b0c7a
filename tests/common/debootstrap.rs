//! The example workspace images (Debian bookworm with systemd as PID 1,
//! and the same with Docker), built by the project's own
//! `images/build.sh` — the script users run, not a copy of it — and pushed
//! to a test registry.
//!
//! The script keeps each image's layer tar in a cache dir (default
//! `/var/cache/cvmd-images`, shared with `scripts/demo.sh`;
//! `CVMD_TEST_CACHE` overrides it), so only the first run on a machine pays
//! for debootstrap (about a minute for the systemd image).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Outlives `target/` and `cargo clean`.
const DEFAULT_CACHE_DIR: &str = "/var/cache/cvmd-images";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("CVMD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh")
}

/// The script's tools.
pub fn available() -> super::prereq::Need {
    for tool in ["debootstrap", "umoci", "skopeo"] {
        super::prereq::tool(tool)?;
    }
    Ok(())
}

/// Builds (or reuses from the cache) example image `kind` (`systemd`,
/// `docker`) with `images/build.sh`, pushes it under `prefix` (a plain
/// HTTP registry's `host:port/repo`) and returns the pushed reference.
/// `layout`, when given, keeps the OCI layout there for inspection.
pub fn build_and_push(kind: &str, prefix: &str, layout: Option<&Path>) -> String {
    build(kind, prefix, layout, None)
}

/// As [`build_and_push`], and its eStargz copy (`--estargz`, made by this
/// build's cvmd): returns the copy's reference.
// Only tests/run/lazy.rs boots the lazily startable variants.
#[allow(dead_code)]
pub fn build_and_push_estargz(kind: &str, prefix: &str) -> String {
    build(kind, prefix, None, Some("--estargz"))
}

/// As [`build_and_push`], and its zstd:chunked copy (`--zstd-chunked`):
/// returns the copy's reference.
#[allow(dead_code)]
pub fn build_and_push_zstd_chunked(kind: &str, prefix: &str) -> String {
    build(kind, prefix, None, Some("--zstd-chunked"))
}

/// `copy`: the flag for a lazily startable copy, whose reference is then
/// the one returned.
fn build(kind: &str, prefix: &str, layout: Option<&Path>, copy: Option<&str>) -> String {
    let started = std::time::Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .arg("--cache")
        .arg(cache_dir())
        .args(["--push", prefix, "--insecure"]);
    if let Some(flag) = copy {
        cmd.arg(flag).env("CVMD", crate::common::cvmd_bin());
    }
    if let Some(dir) = layout {
        cmd.arg("--layout").arg(dir);
    }
    let out = cmd
        .arg(kind)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run images/build.sh");
    assert!(
        out.status.success(),
        "images/build.sh {kind} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reference = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("images/build.sh printed no reference"))
        .to_string();
    eprintln!(
        "images/build.sh {kind}: {reference} in {:?}",
        started.elapsed()
    );
    reference
}
