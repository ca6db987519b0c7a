//! Leases: what a running workspace mounts, so garbage collection never
//! removes it. A lease is a file naming the layers, locked for as long as
//! the workspace runs; one whose lock nobody holds is stale (a crash) and
//! means nothing.
//!
//! The pull lock is the other half: every pull holds `<cache>/gc.lock`
//! shared from its first download until its image record is written, and
//! gc holds it exclusively, so gc never sees a blob that a pull has stored
//! but not yet recorded.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{io_err, StoreError};
use crate::digest::Digest;

#[derive(Debug, Serialize, Deserialize)]
struct LeaseFile {
    reference: String,
    layers: Vec<Digest>,
    /// Where the rootfs is mounted: a lease outlives its process while
    /// this is still a mount point (`cvmd rootfs` leaves its mount behind).
    #[serde(default)]
    target: Option<PathBuf>,
}

/// Held while a workspace uses its layers; released (and removed) on drop.
pub struct Lease {
    path: PathBuf,
    _file: File,
}

fn leases_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("leases")
}

impl Lease {
    /// Takes the lease `name` (a workspace's name; one lease per name).
    pub fn acquire(
        cache_dir: &Path,
        name: &str,
        reference: &str,
        layers: &[Digest],
        target: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let dir = leases_dir(cache_dir);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // The name becomes a file name: keep it to a safe alphabet.
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{safe}.lease"));
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.try_lock().map_err(|_| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other("another cvmd holds this workspace's lease"),
        })?;
        let json = serde_json::to_vec(&LeaseFile {
            reference: reference.to_string(),
            layers: layers.to_vec(),
            target: target.map(Path::to_path_buf),
        })
        .expect("plain struct");
        file.set_len(0)
            .and_then(|()| file.write_all(&json))
            .map_err(io_err(&path))?;
        Ok(Lease { path, _file: file })
    }
}

impl Lease {
    /// Keeps the lease file after this process ends; it stays in force while
    /// its target is mounted.
    pub fn keep_while_mounted(self) {
        std::mem::forget(self);
    }

    /// Removes the lease `name` whatever holds it (after an unmount).
    pub fn release(cache_dir: &Path, name: &str) {
        let _ =
            std::fs::remove_file(leases_dir(cache_dir).join(format!("{}.lease", safe_name(name))));
    }
}

fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Mount points in this mount namespace (field 5 of mountinfo, with the
/// kernel's octal escapes for space, tab, newline and backslash undone).
fn mount_points() -> BTreeSet<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .collect()
}

/// Layers named by leases that are held right now; stale lease files are
/// removed on the way.
pub fn layers_in_use(cache_dir: &Path) -> Result<BTreeSet<Digest>, StoreError> {
    let dir = leases_dir(cache_dir);
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mounts = mount_points();
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        let held = super::lock::is_held(&path);
        let parsed = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok());
        let mounted = parsed
            .as_ref()
            .and_then(|l| l.target.as_ref())
            .is_some_and(|t| mounts.contains(t));
        match parsed {
            Some(lease) if held || mounted => out.extend(lease.layers),
            // Held but unreadable: being written right now; refuse to guess.
            None if held => {
                return Err(StoreError::Io {
                    path,
                    source: std::io::Error::other("a lease is being written; run gc again"),
                })
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(out)
}

/// The pull side of the gc lock: shared, waited for while a gc runs.
pub async fn pull_lock(cache_dir: &Path) -> Result<File, StoreError> {
    let path = cache_dir.join("gc.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    loop {
        match file.try_lock_shared() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
}

/// The gc side: exclusive, waited for while pulls run.
pub async fn gc_lock(cache_dir: &Path) -> Result<File, StoreError> {
    super::lock::lock_file(&cache_dir.join("gc.lock"), || {
        tracing::info!("waiting for pulls in progress before collecting garbage")
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_leases_count_and_stale_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l1");
        let lease =
            Lease::acquire(dir.path(), "ws/1", "r", std::slice::from_ref(&d), None).unwrap();
        assert!(
            Lease::acquire(dir.path(), "ws/1", "r", &[], None).is_err(),
            "one holder per name"
        );
        assert_eq!(layers_in_use(dir.path()).unwrap(), BTreeSet::from([d]));
        std::fs::write(leases_dir(dir.path()).join("crashed.lease"), b"{}").unwrap();
        layers_in_use(dir.path()).unwrap();
        assert!(!leases_dir(dir.path()).join("crashed.lease").exists());
        drop(lease);
        assert!(layers_in_use(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_kept_lease_lasts_while_its_target_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l1");
        // What a `cvmd rootfs` that exited leaves: lease files nobody locks.
        // "/" is always a mount point; a temp dir is not.
        let write = |name: &str, layer: &Digest, target: &Path| {
            let lease = LeaseFile {
                reference: "r".into(),
                layers: vec![layer.clone()],
                target: Some(target.to_path_buf()),
            };
            std::fs::create_dir_all(leases_dir(dir.path())).unwrap();
            std::fs::write(
                leases_dir(dir.path()).join(format!("{name}.lease")),
                serde_json::to_vec(&lease).unwrap(),
            )
            .unwrap();
        };
        write("mounted", &d, Path::new("/"));
        write("gone", &Digest::of(b"l2"), dir.path());
        assert_eq!(layers_in_use(dir.path()).unwrap(), BTreeSet::from([d]));
        assert!(!leases_dir(dir.path()).join("gone.lease").exists());
        Lease::release(dir.path(), "mounted");
        assert!(layers_in_use(dir.path()).unwrap().is_empty());
    }
}
