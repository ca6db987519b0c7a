//! `CVMD_DISK_SIZE`: the writable layer and the persistent paths live in
//! one ext4 file system of that size, an image file (`disk.ext4`, sparse)
//! on the volume (`CVMD_PERSIST_DIR`, else the state dir), loop-mounted
//! at `<state>/volume`. A full disk is ENOSPC inside the workspace and
//! one `disk` event outside, never the node's disk filling up.
//!
//! Project quotas (ext4 `prjquota`, XFS `pquota`) would bound the dirs in
//! place, without an image file; cvmd does not set them yet, and preflight
//! says the image file is what applies.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DiskError;

pub const IMAGE: &str = "disk.ext4";
pub const MOUNT: &str = "volume";

/// The mounted file system: where the volume's `disk/` and `paths/` are.
#[derive(Debug, Clone)]
pub struct Bounded {
    pub mount: PathBuf,
    pub image: PathBuf,
    pub size: u64,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), DiskError> {
    let out = cmd.output().map_err(|e| DiskError::Size {
        what: what.to_string(),
        why: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(DiskError::Size {
        what: what.to_string(),
        why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn detach(mount: &Path) {
    let _ = rustix::mount::unmount(
        mount,
        rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
    );
}

/// Makes (when new) and mounts the image file in `dir` at `ws_dir/volume`.
/// An image of another size is used as it is, with a warning.
pub fn mount(dir: &Path, ws_dir: &Path, size: u64) -> Result<Bounded, DiskError> {
    let image = dir.join(IMAGE);
    let mount = ws_dir.join(MOUNT);
    // What a crashed run left mounted.
    detach(&mount);
    std::fs::create_dir_all(&mount).map_err(|e| DiskError::Size {
        what: format!("creating {}", mount.display()),
        why: e.to_string(),
    })?;
    match std::fs::symlink_metadata(&image) {
        Ok(m) if m.is_file() => {
            if m.len() != size {
                tracing::warn!(image = %image.display(), bytes = m.len(), wanted = size, "the disk image has another size than CVMD_DISK_SIZE: used as it is");
            }
        }
        Ok(_) => {
            return Err(DiskError::Volume {
                path: image,
                why: "it is not a regular file (a symlink is not followed)".into(),
            })
        }
        Err(_) => {
            let tmp = dir.join(format!(".{IMAGE}.new"));
            let _ = std::fs::remove_file(&tmp);
            let file = std::fs::File::create(&tmp)
                .and_then(|f| f.set_len(size).map(|()| f))
                .map_err(|e| DiskError::Size {
                    what: format!("creating {}", tmp.display()),
                    why: e.to_string(),
                })?;
            drop(file);
            // No blocks reserved for root: the workspace's root is the one
            // who fills it, and the bound is the whole size.
            run(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-m", "0"])
                    .arg(&tmp),
                "mkfs.ext4 (install e2fsprogs in the outer image)",
            )?;
            std::fs::rename(&tmp, &image).map_err(|e| DiskError::Size {
                what: format!("publishing {}", image.display()),
                why: e.to_string(),
            })?;
            tracing::info!(image = %image.display(), bytes = size, "disk image made");
        }
    }
    run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
            .arg(&image)
            .arg(&mount),
        "mount -o loop of the disk image",
    )?;
    Ok(Bounded { mount, image, size })
}

impl Bounded {
    pub fn unmount(&self) {
        detach(&self.mount);
        let _ = std::fs::remove_dir(&self.mount);
    }

    /// Bytes still free, and the file system's size.
    pub fn free(&self) -> Option<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.mount).ok()?;
        Some((
            st.f_bavail.saturating_mul(st.f_frsize),
            st.f_blocks.saturating_mul(st.f_frsize),
        ))
    }
}

/// Full: under 1% (or 1 MiB) free. Free again: over 5%.
pub fn full(free: u64, total: u64) -> bool {
    free < (total / 100).max(1 << 20)
}

pub fn free_again(free: u64, total: u64) -> bool {
    free > total / 20
}

/// Whether the file system holding `path` (its mount in `mountinfo`) is
/// mounted with project quotas (ext4 `prjquota`, XFS `prjquota`/`pquota`).
pub fn project_quotas(mountinfo: &[u8], path: &Path) -> bool {
    let mut best: Option<(usize, bool)> = None;
    for line in mountinfo.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = PathBuf::from(std::ffi::OsString::from(
            String::from_utf8_lossy(&crate::rootfs::mountinfo::unescape(point)).into_owned(),
        ));
        if !path.starts_with(&point) {
            continue;
        }
        // Super options are the last field, after the " - " separator.
        let quota = fields.last().is_some_and(|opts| {
            opts.split(|&b| b == b',')
                .any(|o| matches!(o, b"prjquota" | b"pquota" | b"prjjquota"))
        });
        let depth = point.components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, quota));
        }
    }
    best.is_some_and(|(_, q)| q)
}

/// Whether the tools the image file needs are on PATH.
pub fn tools_missing() -> Vec<&'static str> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    ["mkfs.ext4", "mount"]
        .into_iter()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_quotas_are_read_from_the_nearest_mount() {
        let info = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
            30 22 8:2 / /data rw,relatime - xfs /dev/sdb rw,attr2,prjquota\n\
            31 30 8:3 / /data/x rw - ext4 /dev/sdc rw\n";
        assert!(project_quotas(info, Path::new("/data/vol")));
        assert!(!project_quotas(info, Path::new("/data/x/vol")));
        assert!(!project_quotas(info, Path::new("/srv")));
    }

    #[test]
    fn full_and_free_again_have_a_gap() {
        let total = 1000 << 20;
        assert!(full(5 << 20, total));
        assert!(!full(20 << 20, total));
        assert!(!free_again(20 << 20, total));
        assert!(free_again(60 << 20, total));
        assert!(full(0, 16 << 20), "a small disk is full under 1 MiB");
    }
}
