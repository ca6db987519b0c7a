//! A test whose prerequisite (root, a tool, a kernel feature) is missing
//! fails under CI (`CI=true`, which `.ci/run` sets), where everything it
//! needs is installed; elsewhere it says why it did not run, and
//! `scripts/test.sh` counts those lines as not run.
//!
//! Each prerequisite is a function returning [`Need`]: `Err` says what is
//! missing and how to install it. A test states what it needs with
//! [`require!`](crate::require), one line per need:
//!
//! ```ignore
//! let runc = require!(prereq::runc());
//! ```

use std::path::{Path, PathBuf};

/// A prerequisite: what it yields when present (a tool's path), or why it
/// is missing and how to fix that.
pub type Need<T = ()> = Result<T, String>;

/// Takes what `need` yields, or reports it missing and returns from the
/// enclosing function: panics under `CI=true`, else prints
/// `ignored: TEST: WHY` and returns `Default::default()` (`()` from a
/// test, `None` or `false` from a helper that passes the miss on).
#[macro_export]
macro_rules! require {
    ($need:expr) => {
        match $need {
            Ok(found) => found,
            Err(why) => {
                $crate::prereq_missing!("{why}");
                return Default::default();
            }
        }
    };
}

/// Reports a missing prerequisite: panics under `CI=true`, else prints
/// `ignored: TEST: WHY` (the caller then returns). Prefer [`require!`],
/// which also returns.
#[macro_export]
macro_rules! prereq_missing {
    ($($arg:tt)*) => {{
        let why = format!($($arg)*);
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("a prerequisite is missing under CI=true: {why}");
        }
        // Past libtest's capture (which takes only the print macros), so
        // the run's log shows it for a test that "passed".
        use std::io::Write as _;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let _ = writeln!(std::io::stderr(), "ignored: {test}: {why}");
    }};
}

/// This process runs as root; `why` says what the test does with it.
pub fn root(why: &str) -> Need {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(format!("needs root ({why})"))
    }
}

/// `name` in one of the system's bin dirs (not PATH: tests clear the
/// environment of what they run).
pub fn tool(name: &str) -> Need<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{name} is not installed (scripts/deps.sh installs it)"))
}

/// The real runc.
pub fn runc() -> Need<PathBuf> {
    tool("runc").map_err(|_| "runc is not installed (apt-get install runc)".into())
}

/// The static busybox the test images are made of.
pub fn busybox() -> Need<PathBuf> {
    let p = PathBuf::from("/bin/busybox");
    if p.exists() {
        Ok(p)
    } else {
        Err("busybox is not installed (apt-get install busybox-static)".into())
    }
}

/// The `docker-registry` binary [`Registry`](super::Registry) starts.
pub fn registry() -> Need {
    if Path::new(super::registry::REGISTRY_BIN).exists() {
        Ok(())
    } else {
        Err("docker-registry not installed (apt-get install docker-registry)".into())
    }
}

/// A file a test runs or reads, installed by `scripts/deps.sh`.
pub fn installed(path: impl AsRef<Path>) -> Need<PathBuf> {
    let p = path.as_ref();
    if p.exists() {
        Ok(p.to_path_buf())
    } else {
        Err(format!(
            "{} is missing (scripts/deps.sh installs it)",
            p.display()
        ))
    }
}
