//! `CVMD_PERSIST=paths`: each persistent path is a directory of the
//! volume mounted over it, owners stored as the workspace sees them.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{volume_dir, DiskError, DiskSettings, Persist};
use crate::rootfs::IdMap;

/// The volume dir name of a persistent path: `/var/lib/docker` is
/// `var%2Flib%2Fdocker`.
pub fn path_name(path: &Path) -> String {
    path.to_string_lossy()
        .trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F")
}

/// For `persist=paths`: each persistent path's volume dir (made from the
/// image's copy in the mounted `rootfs` when new), as mounts in order.
/// Owners on the volume are unshifted: `idmap` is the range the rootfs
/// shows its owners in.
pub fn persistent_mounts(
    s: &DiskSettings,
    rootfs: &Path,
    idmap: Option<&IdMap>,
) -> Result<Vec<crate::bundle::UserMount>, DiskError> {
    let (Some(vol), Persist::Paths) = (&s.persist_dir, s.persist) else {
        return Ok(Vec::new());
    };
    volume_dir(vol)?;
    let base = vol.join("paths");
    volume_dir(&base)?;
    let mut out = Vec::new();
    for path in &s.paths {
        let at = base.join(path_name(path));
        let err = |source| DiskError::Path {
            path: path.clone(),
            at: at.clone(),
            source,
        };
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DiskError::Volume {
                    path: at.clone(),
                    why: "it is not a directory (a symlink is not followed)".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = base.join(format!(".{}.new", path_name(path)));
                let rel = crate::rootfs::keep_relative(path).expect("checked when parsed");
                seed(&rootfs.join(rel), &tmp, idmap).map_err(err)?;
                std::fs::rename(&tmp, &at).map_err(err)?;
                tracing::info!(path = %path.display(), at = %at.display(), "persistent path made from the image's copy");
            }
            Err(e) => return Err(err(e)),
        }
        out.push(crate::bundle::UserMount {
            source: at,
            destination: path.clone(),
            readonly: false,
        });
    }
    Ok(out)
}

/// The ID the workspace sees for a host ID of its rootfs.
fn unshift(id: u32, base: Option<u32>, size: u32) -> u32 {
    match base {
        None => id,
        Some(b) if (b..b.saturating_add(size)).contains(&id) => id - b,
        Some(_) => 65534,
    }
}

/// Copies the image's `from` (not following links, not leaving its file
/// system) to a new `to`, owners unshifted; a missing `from` gives an empty
/// root-owned dir. Devices and sockets are not copied.
fn seed(from: &Path, to: &Path, idmap: Option<&IdMap>) -> std::io::Result<()> {
    if to.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(to)?;
    }
    let (ub, gb, size) = match idmap {
        Some(m) => (Some(m.host_uid), Some(m.host_gid), m.size),
        None => (None, None, u32::MAX),
    };
    let meta = match std::fs::symlink_metadata(from) {
        Ok(m) if m.is_dir() => m,
        _ => {
            std::fs::DirBuilder::new().mode(0o755).create(to)?;
            return std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755));
        }
    };
    let dev = meta.dev();
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        let m = std::fs::symlink_metadata(&src)?;
        if m.dev() != dev {
            continue;
        }
        let ft = m.file_type();
        if ft.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&dst)?;
            for entry in std::fs::read_dir(&src)? {
                let entry = entry?;
                stack.push((entry.path(), dst.join(entry.file_name())));
            }
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            continue;
        }
        std::os::unix::fs::lchown(
            &dst,
            Some(unshift(m.uid(), ub, size)),
            Some(unshift(m.gid(), gb, size)),
        )?;
        if !ft.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_are_one_component_and_distinct() {
        assert_eq!(
            path_name(Path::new("/var/lib/docker")),
            "var%2Flib%2Fdocker"
        );
        assert_ne!(path_name(Path::new("/a-b")), path_name(Path::new("/a/b")));
        assert_ne!(path_name(Path::new("/a%2Fb")), path_name(Path::new("/a/b")));
    }
}
