//! Missing prerequisites, as the workspace's tests/common/prereq.rs
//! handles them: a test fails under `CI=true` (where everything is
//! installed) and otherwise prints `ignored: TEST: WHY`, which
//! `scripts/test.sh` counts as not run. Never a silent return.

use std::path::Path;

pub type Need<T = ()> = Result<T, String>;

/// Takes what `need` yields, or reports it missing and returns from the
/// enclosing test.
#[macro_export]
macro_rules! require {
    ($need:expr) => {
        match $need {
            Ok(found) => found,
            Err(why) => {
                let why: String = why;
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("a prerequisite is missing under CI=true: {why}");
                }
                use std::io::Write as _;
                let test = std::thread::current().name().unwrap_or("?").to_string();
                let _ = writeln!(std::io::stderr(), "ignored: {test}: {why}");
                return Default::default();
            }
        }
    };
}

/// Root and a usable `/dev/fuse`: what mounting a lazy layer takes.
pub fn fuse() -> Need {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root (mounts a FUSE file system)".into());
    }
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| {
            format!(
                "/dev/fuse is not usable ({e}): modprobe fuse, or give the container the device"
            )
        })
}

/// The kernel's overlay file system.
pub fn overlay() -> Need {
    let fss = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss.lines().any(|l| l.ends_with("\toverlay")) || Path::new("/sys/module/overlay").exists() {
        Ok(())
    } else {
        Err("the kernel has no overlay file system (modprobe overlay)".into())
    }
}
