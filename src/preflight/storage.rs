//! The cache dir's file system: the verdicts are `store::fs_check`'s (the
//! same ones `cvmd pull` enforces), shown as a check.

use super::{Check, Host, Options};
use crate::store::fs_check::{judge, CacheFs};

/// The file system's name for messages.
pub fn fs_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0xFE53_4D42 | 0xFF53_4D42 => "smb",
        0x2FC1_2FC1 => "zfs",
        _ => "local",
    }
}

pub fn check(host: &dyn Host, opts: &Options) -> (Check, Option<i64>) {
    let name = "cache-fs";
    let dir = opts.cache_dir.display();
    let magic = match host.fs_magic(&opts.cache_dir) {
        Ok(m) => m,
        Err(e) => {
            return (
                Check::fail(
                    name,
                    format!("cannot stat the file system of {dir}: {e}"),
                    "make CVMD_CACHE_DIR (or its parent) exist and be readable by root",
                ),
                None,
            )
        }
    };
    let check = match judge(magic) {
        CacheFs::Good(_) => Check::ok(name, format!("{dir} is on {}", fs_name(magic))),
        CacheFs::Caveat(_, why) => Check::warn(
            name,
            format!("{dir} is on {}: works with a caveat", fs_name(magic)),
            why,
        ),
        CacheFs::Refused(fs, why) => Check::fail(name, format!("{dir} is on {fs}"), why),
    };
    (check, Some(magic))
}
