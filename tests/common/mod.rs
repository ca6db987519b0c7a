//! The one integration-test harness, shared by every test binary (each
//! `tests/AREA/main.rs` pulls it in with `#[path = "../common/mod.rs"]
//! #[macro_use] mod common;`). One builder or helper per fixture:
//!
//! - prerequisites and [`require!`](crate::require): [`prereq`]
//! - the binaries under test: [`cvmd_bin`], [`cvmctl_bin`]
//! - registries (plain, TLS, basic and token auth): [`registry`], [`token`],
//!   [`pki`], [`cred`]; pushing: [`registry::push`], [`push`]
//! - images and layers: [`image`], [`busybox`], [`cli::small_image`],
//!   [`debootstrap`] (the example images)
//! - a fault-injecting proxy: [`proxy`]
//! - running cvmd: [`cli::SealedCvmd`] (own HOME and docker config, for
//!   pulls), [`layers::CvmdOnCache`] (a test's cache dir and registry, for
//!   everything past the pull) with the cache's sandbox and tree snapshots
//! - a running workspace: [`api`] (through `cvmd run` and cvmctl), [`exec`]
//!   (bundle and runc driven from the test, through the reaper)
//! - a private containerd: [`containerd`]

// Each integration-test binary compiles this module and uses only part of it.
#![allow(dead_code, unused_imports)]

// First: its macros (`require!`) are used by the modules below.
#[macro_use]
pub mod prereq;

pub mod api;
pub mod busybox;
pub mod cli;
pub mod containerd;
pub mod cred;
pub mod debootstrap;
pub mod exec;
pub mod image;
pub mod layers;
pub mod pki;
pub mod proxy;
pub mod push;
pub mod registry;
pub mod server;
pub mod token;

pub use cred::cred_helper;
pub use registry::Registry;

use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
///
/// Racy by nature (another process may grab it before we bind), but the
/// window is tiny and the registry binary cannot be handed a listening socket.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// Polls `pred` every 20 ms until it returns true or `timeout` elapses.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a future to completion on a fresh runtime in a scoped thread.
///
/// A fresh thread makes this callable from plain `#[test]`s and from inside
/// `#[tokio::test]` alike (nesting runtimes on one thread panics).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(fut)
        })
        .join()
        .expect("block_on thread panicked")
    })
}

/// A `kB` field of /proc/PID/status (`VmHWM`, `RssAnon`...), in KiB; None
/// once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A reqwest client that trusts `ca` (if given) and never follows redirects,
/// so tests see exactly what the server said.
pub fn http_client(ca: Option<&Path>) -> reqwest::Client {
    cvmd_image::registry::client::tls_crypto();
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("read CA pem");
        let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("parse CA pem");
        b = b.tls_certs_only(certs);
    }
    b.build().expect("reqwest client")
}

/// The `cvmd` binary under test. The only place the tests name its path.
pub fn cvmd_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_cvmd"));
    assert!(p.exists(), "cvmd binary missing at {}", p.display());
    p
}

/// The `cvmctl` binary under test, the only place the tests name its
/// path. It is its own package (crates/cvmctl) and cargo sets
/// `CARGO_BIN_EXE_*` only for the package's own binaries; a workspace
/// build (`cargo test --workspace`, as scripts/test.sh runs) puts it
/// beside cvmd.
pub fn cvmctl_bin() -> PathBuf {
    let p = cvmd_bin().with_file_name("cvmctl");
    assert!(
        p.exists(),
        "cvmctl binary missing at {}: build it with `cargo build -p cvmctl`",
        p.display()
    );
    p
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query
/// values; reqwest 0.13 without its `query` feature has no `.query()`).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `dir` is a mount point in this mount namespace (mountinfo's
/// fifth field; test dirs have no characters mountinfo escapes).
pub fn is_mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4) == dir.to_str())
}
