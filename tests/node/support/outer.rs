//! The outer image's root file system, built once per machine by
//! `images/outer-tree.sh` and used read-only as every pod's lower dir.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The cached tree (built on first use, about a minute; reused after), or
/// why it cannot be built here (no debootstrap, no reachable mirror).
pub fn tree() -> Result<PathBuf, String> {
    static TREE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TREE.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/images/outer-tree.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--cache")
        .arg(crate::common::debootstrap::cache_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run images/outer-tree.sh");
    if !out.status.success() {
        return Err(format!(
            "images/outer-tree.sh cannot build the outer tree ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    if !(path.join("usr/sbin/runc").exists() && path.join("usr/sbin/iptables").exists()) {
        return Err(format!("{} lacks runc or iptables", path.display()));
    }
    Ok(path)
}
