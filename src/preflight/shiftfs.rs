//! shiftfs facts from the host tree; the decisions are `crate::shiftfs`'s.

use std::path::PathBuf;

use super::{Check, Host, Options};
use crate::shiftfs::{self as sf, Facts};

/// Whether `/proc/filesystems` lists `name`.
pub fn filesystem_listed(host: &dyn Host, name: &str) -> bool {
    host.read("/proc/filesystems")
        .is_some_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(name)))
}

/// A `shiftfs.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz` under
/// /lib/modules/RELEASE (distribution kernels put it under kernel/fs,
/// DKMS under updates/ or extra/).
fn module_on_disk(host: &dyn Host, release: &str) -> Option<PathBuf> {
    let mut stack = vec![(host.path(&format!("/lib/modules/{release}")), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(ft) = e.file_type() else { continue };
            // build/ and source/ point at the headers: no modules there.
            if ft.is_dir() && depth < 6 && name != "build" && name != "source" {
                stack.push((e.path(), depth + 1));
            } else if ft.is_file() && name.starts_with("shiftfs.ko") {
                return Some(e.path());
            }
        }
    }
    None
}

fn headers(host: &dyn Host, release: &str) -> Option<PathBuf> {
    [
        format!("/lib/modules/{release}/build"),
        format!("/usr/src/linux-headers-{release}"),
    ]
    .into_iter()
    .map(|p| host.path(&p))
    .find(|p| p.join("Makefile").is_file())
}

pub fn facts(host: &dyn Host, idmapped_serves: bool) -> Facts {
    let release = host.release();
    Facts {
        loaded: filesystem_listed(host, "shiftfs"),
        module: module_on_disk(host, &release),
        secure_boot: sf::secure_boot(
            host.exists("/sys/firmware/efi"),
            host.read_bytes(sf::SECURE_BOOT_VAR).as_deref(),
        ),
        headers: headers(host, &release),
        idmapped_serves,
        release,
    }
}

pub fn check(host: &dyn Host, opts: &Options, idmapped_serves: bool) -> Check {
    let name = "shiftfs";
    let facts = facts(host, idmapped_serves);
    let verdict = sf::decide(&facts);
    let (detail, fix) = sf::message(&facts, &verdict);
    if !opts.sysbox() && !matches!(verdict, sf::Verdict::Loaded) {
        return Check::skip(name, format!("not used by {}: {detail}", opts.runtime));
    }
    match (verdict, fix) {
        (sf::Verdict::Loaded | sf::Verdict::NotNeeded, _) | (_, None) => Check::ok(name, detail),
        // Sysbox still runs without it, by chowning each rootfs: slow,
        // not broken.
        (_, Some(fix)) => Check::warn(name, detail, fix),
    }
}
