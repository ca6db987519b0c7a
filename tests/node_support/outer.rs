//! The outer image's root file system, built once per machine by
//! `images/outer-tree.sh` and used read-only as every pod's lower dir.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The cached tree (built on first use, about a minute; reused after).
pub fn tree() -> PathBuf {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/images/outer-tree.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--cache")
        .arg(crate::common::debootstrap::cache_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run images/outer-tree.sh");
    assert!(
        out.status.success(),
        "images/outer-tree.sh failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        path.join("usr/sbin/runc").exists() && path.join("usr/sbin/iptables").exists(),
        "{} lacks runc or iptables",
        path.display()
    );
    path
}
