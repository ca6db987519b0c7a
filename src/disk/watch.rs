//! A bounded disk as seen from outside: the full-disk event, and
//! preflight's word on what bounds it.

use std::path::{Path, PathBuf};

use super::{size, DiskSettings};

/// Watches a bounded disk's free space: one `disk` event (and a warning)
/// when it fills up, again only after it had room once more.
pub async fn watch_full(mount: PathBuf, size: u64, state: crate::supervisor::state::StateHandle) {
    let bounded = size::Bounded {
        mount,
        image: PathBuf::new(),
        size,
    };
    let mut reported = false;
    loop {
        if let Some((free, total)) = bounded.free() {
            if !reported && size::full(free, total) {
                reported = true;
                state.disk_event(&format!(
                    "the workspace's disk is full ({} MiB, CVMD_DISK_SIZE): writes inside fail with ENOSPC until files are removed",
                    total >> 20
                ));
            } else if reported && size::free_again(free, total) {
                reported = false;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Preflight's word on the disk's bound.
/// `state_dir` holds the image file when there is no persistent volume.
pub fn size_check(s: &DiskSettings, state_dir: &Path) -> crate::preflight::Check {
    use crate::preflight::Check;
    let name = "disk-size";
    let Some(bytes) = s.size else {
        return Check::skip(
            name,
            "the disk is unbounded (CVMD_DISK_SIZE unset)".to_string(),
        );
    };
    let missing = size::tools_missing();
    let at = s
        .persist_dir
        .as_ref()
        .map_or("the state dir".to_string(), |p| p.display().to_string());
    if !missing.is_empty() {
        return Check::fail(
            name,
            format!("CVMD_DISK_SIZE needs {} on PATH", missing.join(", ")),
            "install e2fsprogs and mount (util-linux) in the outer image, or unset CVMD_DISK_SIZE",
        );
    }
    let dir = s.persist_dir.as_deref().unwrap_or(state_dir);
    let quotas =
        std::fs::read("/proc/self/mountinfo").is_ok_and(|info| size::project_quotas(&info, dir));
    let why = if quotas {
        "its file system has project quotas, which cvmd does not use yet"
    } else {
        "its file system has no project quotas"
    };
    Check::ok(
        name,
        format!(
            "{} MiB in a loop-mounted ext4 image file on {at} ({why})",
            bytes >> 20
        ),
    )
}
