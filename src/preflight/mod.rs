//! Host preflight: one report of what this node can and cannot do for a
//! CVM, each finding with a one-line fix. Run by `cvmd preflight` and at
//! the start of `cvmd run`, where a hard failure stops the start.
//!
//! Everything is read through [`Host`] (a root dir, the kernel release,
//! probes), so the decisions are unit-tested over fake trees. A check fails
//! only when the chosen runtime really cannot work; what merely degrades
//! (chowned copies instead of ID-mapped mounts, ...) is a warning, and what
//! belongs to another runtime is skipped.

mod cgroup;
pub mod containerd;
mod devices;
mod host;
mod idmap;
mod isolation;
mod kernel;
mod privilege;
mod proxy;
mod render;
mod shiftfs;
mod start;
mod storage;
mod sysbox;
mod version;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use host::{Host, Probe, RealHost};
pub use kernel::Version;
pub use render::{render, Symbols};
pub use shiftfs::facts as shiftfs_facts;
pub use start::at_start;
pub use version::run_with as version_with;

use crate::bundle::RuntimeFlavor;

/// One finding; maps 1:1 onto the control API's `Check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// One line: what was found.
    pub detail: String,
    /// One line: what to do; set when the status is warn or fail.
    pub fix: Option<String>,
}

impl Check {
    pub fn new(name: &str, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail,
            fix,
        }
    }
    pub fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail.into(), None)
    }
    pub fn skip(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Skip, detail.into(), None)
    }
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail.into(), Some(fix.into()))
    }
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail.into(), Some(fix.into()))
    }
}

/// What the checks depend on, from the settings (`usr_lib_dir` is the
/// dir `cvmd run` looks in, so both agree).
#[derive(Debug, Clone)]
pub struct Options {
    /// The runtime setting (name or path).
    pub runtime: String,
    pub cache_dir: PathBuf,
    /// An ID mapping is asked for (runc then needs user namespaces).
    pub idmap: bool,
    /// `CVMD_IDMAP=host-unsafe`: the workspace in the node's user namespace.
    pub host_userns: bool,
    pub add_fuse: bool,
    pub add_tun: bool,
    /// `CVMD_LAZY=auto`: lazy start serves layers through `/dev/fuse`.
    pub lazy: bool,
    pub usr_lib_dir: Option<PathBuf>,
    /// The daemons `cvmd run` starts (names or paths), so preflight
    /// judges the same binaries.
    pub sysbox_mgr: String,
    pub sysbox_fs: String,
    /// Where the daemons' sockets are: one that answers is already running.
    pub sysbox_run_dir: PathBuf,
}

impl Options {
    pub fn sysbox(&self) -> bool {
        RuntimeFlavor::of_runtime(&self.runtime) == RuntimeFlavor::Sysbox
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub runtime: String,
    /// No check failed: the exit code is 0 exactly then.
    pub passed: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(runtime: &str, checks: Vec<Check>) -> Report {
        Report {
            runtime: runtime.into(),
            passed: !checks.iter().any(|c| c.status == Status::Fail),
            checks,
        }
    }

    /// The report with one more check (one that needs async work).
    pub fn with(self, check: Check) -> Report {
        let mut checks = self.checks;
        checks.push(check);
        Report::new(&self.runtime, checks)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// Each finding as a log line: failures as errors, warnings as warnings.
    pub fn log(&self) {
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        tracing::info!(
            ok = count(Status::Ok),
            warn = count(Status::Warn),
            fail = count(Status::Fail),
            skip = count(Status::Skip),
            runtime = %self.runtime,
            "preflight checked the host"
        );
        for c in &self.checks {
            let fix = c.fix.as_deref().unwrap_or("");
            match c.status {
                Status::Fail => tracing::error!(check = %c.name, fix, "preflight: {}", c.detail),
                Status::Warn => tracing::warn!(check = %c.name, fix, "preflight: {}", c.detail),
                Status::Ok | Status::Skip => {
                    tracing::debug!(check = %c.name, status = ?c.status, "preflight: {}", c.detail)
                }
            }
        }
    }

    /// The error that stops `cvmd run`, or `None` when the host passed:
    /// every failed check, then each distinct fix once.
    pub fn into_error(self) -> Option<PreflightError> {
        let mut failed = Vec::new();
        let mut fixes: Vec<&str> = Vec::new();
        for c in self.failures() {
            failed.push(format!("{}: {}", c.name, c.detail));
            let fix = c.fix.as_deref().unwrap_or("see cvmd preflight");
            if !fixes.contains(&fix) {
                fixes.push(fix);
            }
        }
        (!failed.is_empty()).then(|| PreflightError::Failed {
            runtime: self.runtime.clone(),
            checks: failed.join("; "),
            fixes: fixes.join("; "),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("this host cannot run the workspace with {runtime}: {checks}; to fix: {fixes}")]
    Failed {
        runtime: String,
        checks: String,
        fixes: String,
    },
    #[error(
        "preflight could not run: {reason}; this is a bug in cvmd: please report it with the log"
    )]
    Internal { reason: String },
}

/// Runs every check, in the order a person reads them.
pub fn collect(host: &dyn Host, opts: &Options) -> Report {
    let span = tracing::info_span!("preflight", runtime = %opts.runtime);
    let _enter = span.enter();
    let release = host.release();
    let kernel_version = Version::parse(&release);
    let caps = privilege::read(host);
    let sys_admin = caps.is_some_and(|c| c.has(privilege::CAP_SYS_ADMIN));

    let mut checks = vec![
        kernel::check(host, opts),
        privilege::check(host, caps),
        isolation::check(opts),
    ];
    checks.extend(sysbox::checks(host, opts));
    checks.push(sysbox::mgr_needs(host, opts));
    checks.push(kernel::userns(host, opts));
    let (cache_check, magic) = storage::check(host, opts);
    let cache_usable = cache_check.status != Status::Fail;
    checks.push(cache_check);
    let fs = magic.map_or("unknown", storage::fs_name);

    let (idmapped, overlay) = if cache_usable {
        let p = host.probe_idmapped(&opts.cache_dir);
        let idm = idmap::judge_idmapped(&p, sys_admin, kernel_version, fs);
        let overlay_probe = if p != Probe::Works {
            Err("the ID-mapped mount probe did not pass")
        } else if magic == Some(crate::rootfs::OVERLAYFS_SUPER_MAGIC) {
            Err("the cache is on overlayfs, where overlay cannot stack (flat copies)")
        } else {
            Ok(host.probe_overlay_idmapped(&opts.cache_dir))
        };
        let ovl = idmap::judge_overlay(
            overlay_probe.as_ref().map_err(|e| *e),
            sys_admin,
            kernel_version,
        );
        (idm, ovl)
    } else {
        let why = "the cache's file system is refused";
        (
            Check::skip("idmapped-mounts", format!("not probed: {why}")),
            Check::skip("overlay-idmapped", format!("not probed: {why}")),
        )
    };
    let idmapped_serves = idmapped.status == Status::Ok && overlay.status == Status::Ok;
    // A probe that could not run (no privilege, refused cache) says
    // nothing about the kernel: shiftfs is then not called "needed".
    let known = cache_usable && idmapped.status != Status::Fail && overlay.status != Status::Fail;
    checks.push(idmapped);
    checks.push(overlay);
    checks.push(if known {
        shiftfs::check(host, opts, idmapped_serves)
    } else {
        Check::skip(
            "shiftfs",
            "cannot tell whether it is needed: the ID-mapped mount probes could not run",
        )
    });
    checks.push(cgroup::check(host));
    checks.push(devices::device(
        host,
        "dev-fuse",
        "/dev/fuse",
        opts.add_fuse,
        "CVMD_ADD_FUSE",
    ));
    checks.push(devices::lazy_start(host, opts.lazy));
    checks.push(devices::device(
        host,
        "dev-net-tun",
        "/dev/net/tun",
        opts.add_tun,
        "CVMD_ADD_TUN",
    ));
    checks.push(devices::gpus(host, opts));
    checks.push(proxy::check(host));
    Report::new(&opts.runtime, checks)
}
