//! The cache dir's file system: the verdicts are `store::fs_check`'s (the
//! same ones `cvmd pull` enforces), shown as a check.

use super::{Check, Host, Options};
pub use crate::store::fs_check::name as fs_name;
use crate::store::fs_check::{judge, CacheFs};

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
