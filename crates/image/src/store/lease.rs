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

use super::{io_err, lock, StoreError};
use cvmd_digest::Digest;

#[derive(Debug, Serialize, Deserialize)]
struct LeaseFile {
    reference: String,
    layers: Vec<Digest>,
    /// Where the rootfs is mounted, for a lease kept after its process
    /// ended (`cvmd rootfs` leaves its mount behind).
    #[serde(default)]
    target: Option<PathBuf>,
    /// The mount namespace (`mnt:[N]`) and boot the target was mounted in:
    /// only a gc in that same namespace can see whether it still is.
    #[serde(default)]
    mount_ns: Option<String>,
    #[serde(default)]
    boot_id: Option<String>,
}

/// Held while a workspace uses its layers; released (and removed) on drop.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    file: File,
    /// Set by [`Lease::keep_while_mounted`]: the file outlives the lock.
    kept: bool,
}

fn leases_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("leases")
}

fn lease_path(cache_dir: &Path, name: &str) -> PathBuf {
    leases_dir(cache_dir).join(format!("{}.lease", super::identity_file_name(name)))
}

/// How long an acquire waits out a gc that is looking at a stale lease of
/// the same name before deciding another cvmd holds it.
const ACQUIRE_PATIENCE: Duration = Duration::from_secs(2);

impl Lease {
    /// Takes the lease of workspace identity `name` (one holder per name on
    /// the node). Take it under [`pull_lock`], so no gc runs between the
    /// image being found in the cache and its layers being leased.
    pub async fn acquire(
        cache_dir: &Path,
        name: &str,
        reference: &str,
        layers: &[Digest],
        target: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let dir = leases_dir(cache_dir);
        super::create_private_dir(&dir)?;
        let path = lease_path(cache_dir, name);
        let deadline = std::time::Instant::now() + ACQUIRE_PATIENCE;
        let mut file = loop {
            let file = lock::open(&path)?;
            if !lock::try_lock(&file, lock::Mode::Exclusive).map_err(io_err(&path))? {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::LeaseHeld {
                        name: name.to_string(),
                        path,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // A gc may have unlinked this (stale) file between our open and
            // our lock: a lock on an unlinked file guards nothing.
            if lock::still_at(&file, &path) {
                break file;
            }
        };
        let (mount_ns, boot_id) = match target {
            Some(_) => (own_mount_ns(), boot_id()),
            None => (None, None),
        };
        let json = serde_json::to_vec(&LeaseFile {
            reference: reference.to_string(),
            layers: layers.to_vec(),
            target: target.map(Path::to_path_buf),
            mount_ns,
            boot_id,
        })
        .expect("plain struct");
        file.set_len(0)
            .and_then(|()| file.write_all(&json))
            .and_then(|()| file.sync_data())
            .map_err(io_err(&path))?;
        Ok(Lease {
            path,
            file,
            kept: false,
        })
    }

    /// Keeps the lease file after this process ends; it stays in force while
    /// its target is mounted (as far as a gc can tell: see
    /// [`layers_in_use`]).
    pub fn keep_while_mounted(mut self) {
        // The lock goes with the open file; the file's content is what
        // counts from here on.
        self.kept = true;
    }

    /// Removes the lease `name` whatever holds it (after an unmount).
    pub fn release(cache_dir: &Path, name: &str) {
        let _ = std::fs::remove_file(lease_path(cache_dir, name));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Unlink while still holding the lock: a gc never sees this file
        // unlocked with our content in it.
        if !self.kept && lock::still_at(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn own_mount_ns() -> Option<String> {
    std::fs::read_link("/proc/self/ns/mnt")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Mount points in this mount namespace (read as bytes: a mount point need
/// not be UTF-8).
fn mount_points() -> BTreeSet<PathBuf> {
    let text = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    cvmd_rootfs::mountinfo::mount_points(&text)
        .into_iter()
        .collect()
}

/// What a lease file found unlocked still protects.
#[derive(Debug, PartialEq, Eq)]
enum Unlocked {
    /// A kept `cvmd rootfs` mount that may still be there.
    InForce,
    /// Nobody can be using it: remove it.
    Stale,
}

/// The pure rule for a lease nobody holds a lock on. A kept lease is in
/// force while its target is mounted; a gc can see that only in the mount
/// namespace it was made in, so one made in another namespace (another
/// pod) is kept until `cvmd rootfs --unmount` releases it or the node
/// reboots (a reboot unmounts everything).
fn judge_unlocked(
    lease: Option<&LeaseFile>,
    own_ns: Option<&str>,
    boot: Option<&str>,
    mounted: impl Fn(&Path) -> bool,
) -> Unlocked {
    let Some(lease) = lease else {
        return Unlocked::Stale;
    };
    let Some(target) = &lease.target else {
        return Unlocked::Stale;
    };
    if lease.boot_id.is_some() && lease.boot_id.as_deref() != boot {
        return Unlocked::Stale;
    }
    match (&lease.mount_ns, own_ns) {
        (Some(theirs), Some(ours)) if theirs != ours => Unlocked::InForce,
        _ if mounted(target) => Unlocked::InForce,
        _ => Unlocked::Stale,
    }
}

/// Layers named by leases in force right now (held by a running cvmd, or
/// kept for a mount); stale lease files are removed on the way.
pub fn layers_in_use(cache_dir: &Path) -> Result<BTreeSet<Digest>, StoreError> {
    let dir = leases_dir(cache_dir);
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mounts = mount_points();
    let (own_ns, boot) = (own_mount_ns(), boot_id());
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        // Never created here: a gc must not make lease files.
        let Ok(file) = File::options().read(true).write(true).open(&path) else {
            continue;
        };
        if lock::is_held_file(&file) {
            if let Some(lease) = read_held(&file, &path)? {
                out.extend(lease.layers);
            }
            continue;
        }
        let parsed = read_lease(&file);
        match judge_unlocked(parsed.as_ref(), own_ns.as_deref(), boot.as_deref(), |t| {
            mounts.contains(t)
        }) {
            Unlocked::InForce => out.extend(parsed.expect("judged in force").layers),
            Unlocked::Stale => {
                // Remove it only under its lock, and only if it is still the
                // file we judged: an acquire may have taken it meanwhile.
                if lock::try_lock(&file, lock::Mode::Exclusive).unwrap_or(false) {
                    if lock::still_at(&file, &path) {
                        let _ = std::fs::remove_file(&path);
                    }
                } else if let Some(lease) = read_held(&file, &path)? {
                    out.extend(lease.layers);
                }
            }
        }
    }
    Ok(out)
}

/// The content of the lease file open as `file`, read through that file
/// (the path may name a newer one by now).
fn read_lease(file: &File) -> Option<LeaseFile> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().ok()?.len();
    if len > MAX_LEASE_BYTES {
        return None;
    }
    let mut buf = vec![0; usize::try_from(len).ok()?];
    file.read_exact_at(&mut buf, 0).ok()?;
    serde_json::from_slice(&buf).ok()
}

/// A lease names an image's layers: far below this.
const MAX_LEASE_BYTES: u64 = 1 << 20;

/// The content of a held lease; one just taken may not be written yet, so
/// wait a moment for it rather than guess. `None` once it is released.
fn read_held(file: &File, path: &Path) -> Result<Option<LeaseFile>, StoreError> {
    for _ in 0..40 {
        if !lock::is_held_file(file) || !lock::still_at(file, path) {
            return Ok(None);
        }
        if let Some(lease) = read_lease(file) {
            return Ok(Some(lease));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(
            "a held lease stayed unreadable for 2 s; the cache may be damaged: run gc again",
        ),
    })
}

/// The pull and start side of the gc lock: shared, waited for while a gc
/// runs. A pull holds it until its image record names everything it
/// stored; a start holds it from finding its image in the cache until its
/// lease names the layers.
pub async fn pull_lock(cache_dir: &Path) -> Result<File, StoreError> {
    let path = cache_dir.join("gc.lock");
    lock::lock_file_as(&path, lock::Mode::Shared, || {}).await
}

/// The gc side: exclusive, waited for while pulls and starts run.
pub async fn gc_lock(cache_dir: &Path) -> Result<File, StoreError> {
    lock::lock_file(&cache_dir.join("gc.lock"), || {
        tracing::info!("waiting for pulls in progress before collecting garbage")
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_leases_count_and_stale_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l1");
        let lease = Lease::acquire(dir.path(), "ws/1", "r", std::slice::from_ref(&d), None)
            .await
            .unwrap();
        let second = Lease::acquire(dir.path(), "ws/1", "r", &[], None).await;
        assert!(
            matches!(second, Err(StoreError::LeaseHeld { .. })),
            "one holder per name: {second:?}"
        );
        // Names that fold to the same safe text are still distinct leases.
        let other = Lease::acquire(dir.path(), "ws_1", "r", &[], None).await;
        assert!(other.is_ok(), "{other:?}");
        drop(other);
        assert_eq!(layers_in_use(dir.path()).unwrap(), BTreeSet::from([d]));
        std::fs::write(leases_dir(dir.path()).join("crashed.lease"), b"{}").unwrap();
        layers_in_use(dir.path()).unwrap();
        assert!(!leases_dir(dir.path()).join("crashed.lease").exists());
        drop(lease);
        assert!(layers_in_use(dir.path()).unwrap().is_empty());
        let left: Vec<_> = std::fs::read_dir(leases_dir(dir.path())).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn gc_looking_at_leases_never_fails_an_acquire() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l1");
        let cache = dir.path().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (cache.clone(), stop.clone());
        let gc = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                layers_in_use(&c).unwrap();
            }
        });
        for _ in 0..200 {
            let lease = Lease::acquire(&cache, "ws", "r", std::slice::from_ref(&d), None)
                .await
                .unwrap();
            assert!(lock::still_at(&lease.file, &lease.path));
            drop(lease);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        gc.join().unwrap();
    }

    fn kept(target: &str, ns: Option<&str>, boot: Option<&str>) -> LeaseFile {
        LeaseFile {
            reference: "r".into(),
            layers: vec![],
            target: Some(target.into()),
            mount_ns: ns.map(Into::into),
            boot_id: boot.map(Into::into),
        }
    }

    #[test]
    fn an_unlocked_lease_is_judged_by_its_own_mount_namespace() {
        let mounted = |p: &Path| p == Path::new("/m");
        let judge = |l: &LeaseFile| judge_unlocked(Some(l), Some("mnt:[1]"), Some("b1"), mounted);
        // Same namespace: what the mount table says.
        assert_eq!(
            judge(&kept("/m", Some("mnt:[1]"), Some("b1"))),
            Unlocked::InForce
        );
        assert_eq!(
            judge(&kept("/x", Some("mnt:[1]"), Some("b1"))),
            Unlocked::Stale
        );
        // Another pod's namespace: cannot be seen, so kept.
        assert_eq!(
            judge(&kept("/x", Some("mnt:[2]"), Some("b1"))),
            Unlocked::InForce
        );
        // Made before a reboot: every mount is gone.
        assert_eq!(
            judge(&kept("/m", Some("mnt:[2]"), Some("b0"))),
            Unlocked::Stale
        );
        // A run's lease is only ever in force while locked.
        let run = LeaseFile {
            target: None,
            ..kept("/m", None, None)
        };
        assert_eq!(judge(&run), Unlocked::Stale);
        assert_eq!(judge_unlocked(None, None, None, mounted), Unlocked::Stale);
    }

    #[tokio::test]
    async fn a_kept_lease_lasts_while_its_target_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"l1");
        // "/" is always a mount point; a temp dir is not.
        let lease = Lease::acquire(
            dir.path(),
            "mounted",
            "r",
            std::slice::from_ref(&d),
            Some(Path::new("/")),
        )
        .await
        .unwrap();
        lease.keep_while_mounted();
        let gone = Lease::acquire(
            dir.path(),
            "gone",
            "r",
            &[Digest::of(b"l2")],
            Some(dir.path()),
        )
        .await
        .unwrap();
        gone.keep_while_mounted();
        assert_eq!(layers_in_use(dir.path()).unwrap(), BTreeSet::from([d]));
        assert!(!lease_path(dir.path(), "gone").exists());
        Lease::release(dir.path(), "mounted");
        assert!(layers_in_use(dir.path()).unwrap().is_empty());
    }
}
