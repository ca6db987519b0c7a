//! The one seam preflight reads the machine through: a root directory for
//! `/proc`, `/sys`, `/lib/modules`, `/usr/src`, `/dev` and `/etc`, the kernel
//! release, and the few things a file cannot tell (write access, mount
//! probes, a program's `--version`). Tests build a fake tree in a tempdir
//! and answer the probes themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::runtime::{DirectSpawner, Spawner};

/// A mount probe's result: the step that failed and its errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Works,
    Failed { step: String, errno: i32 },
}

pub trait Host: Send + Sync {
    /// Where `/` of the machine is (`/` for the real one).
    fn root(&self) -> &Path;
    /// `uname -r`.
    fn release(&self) -> String;
    /// Whether root may create entries in `path` (as [`Host::path`] gave it).
    fn writable(&self, path: &Path) -> bool;
    /// statfs type of the file system holding `dir` (or its nearest
    /// existing ancestor: preflight creates nothing just to look).
    fn fs_magic(&self, dir: &Path) -> std::io::Result<i64>;
    /// ID-mapped mount of a fresh dir inside `dir`.
    fn probe_idmapped(&self, dir: &Path) -> Probe;
    /// An overlay mount whose lower layer is an ID-mapped mount, in `dir`.
    fn probe_overlay_idmapped(&self, dir: &Path) -> Probe;
    /// The first line `program --version` printed, or why there is none.
    fn version(&self, program: &Path) -> Result<String, String>;

    /// `path` (absolute, as on the machine) under the root.
    fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.path(path)).ok()
    }
    fn read_bytes(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(path)).ok()
    }
    fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }
    /// Names in a directory, sorted; empty when it is missing.
    fn list(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(path))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// The machine cvmd runs on.
pub struct RealHost {
    root: PathBuf,
    /// Runs `--version`: the reaper once cvmd runs one (its `waitpid(-1)`
    /// would take a direct waiter's status), a direct waiter before.
    spawner: Arc<dyn Spawner>,
    /// `--version` gets this long before it is killed: a wedged binary must
    /// not hold cvmd's start.
    pub version_timeout: std::time::Duration,
}

impl std::fmt::Debug for RealHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealHost")
            .field("root", &self.root)
            .field("version_timeout", &self.version_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for RealHost {
    fn default() -> Self {
        RealHost {
            root: PathBuf::from("/"),
            spawner: Arc::new(DirectSpawner),
            version_timeout: std::time::Duration::from_secs(5),
        }
    }
}

impl RealHost {
    pub fn with_spawner(spawner: Arc<dyn Spawner>) -> RealHost {
        RealHost {
            spawner,
            ..RealHost::default()
        }
    }
}

/// The nearest existing ancestor of `dir` (itself if it exists).
fn existing(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

impl Host for RealHost {
    fn root(&self) -> &Path {
        &self.root
    }

    fn release(&self) -> String {
        rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned()
    }

    fn writable(&self, path: &Path) -> bool {
        // access(2) reports EROFS for a read-only mount, which is how a
        // non-privileged container sees /sys/fs/cgroup; mode bits do not
        // stop root.
        rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
    }

    fn fs_magic(&self, dir: &Path) -> std::io::Result<i64> {
        crate::rootfs::fs_magic(existing(dir))
    }

    fn probe_idmapped(&self, dir: &Path) -> Probe {
        remembered(dir, "idmapped", crate::rootfs::probe::idmapped_mount)
    }

    fn probe_overlay_idmapped(&self, dir: &Path) -> Probe {
        remembered(
            dir,
            "overlay-idmapped",
            crate::rootfs::probe::overlay_on_idmapped,
        )
    }

    fn version(&self, program: &Path) -> Result<String, String> {
        super::version::run_with(self.spawner.as_ref(), program, self.version_timeout)
    }
}

/// Where the probes that worked on this boot are remembered.
const WORKED: &str = ".preflight-worked";

/// A probe that worked on this boot and on `dir`'s file system is not run
/// again: a kernel feature does not come and go without a reboot, and the
/// probes' mounts cost tens of milliseconds on every start (a warm start
/// is ~0.2 s). A failure is always probed again.
fn remembered(
    dir: &Path,
    name: &str,
    probe: fn(&Path) -> Result<(), crate::rootfs::StepError>,
) -> Probe {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let dev = std::fs::create_dir_all(dir).and_then(|()| std::fs::metadata(dir));
    let (Ok(boot), Ok(dev)) = (boot, dev) else {
        return with_probe_dir(dir, probe);
    };
    let boot = boot.trim();
    let key = format!("{boot} {} {name}", dev.dev());
    let file = dir.join(WORKED);
    let known = std::fs::read_to_string(&file).unwrap_or_default();
    if known.lines().any(|l| l == key) {
        return Probe::Works;
    }
    let result = with_probe_dir(dir, probe);
    if matches!(result, Probe::Works) {
        // Only this boot's lines: older ones can never match again.
        let mut lines: Vec<&str> = known.lines().filter(|l| l.starts_with(boot)).collect();
        lines.push(&key);
        let write = tempfile::NamedTempFile::new_in(dir).and_then(|tmp| {
            std::fs::write(tmp.path(), lines.join("\n") + "\n")?;
            tmp.persist(&file).map(drop).map_err(|e| e.error)
        });
        if let Err(e) = write {
            tracing::debug!(error = %e, "the probe's result is not remembered");
        }
    }
    result
}

/// Runs `probe` in a fresh dir under `dir` (created with its parents; the
/// cache dir is where the layers will live) and removes it after.
fn with_probe_dir(dir: &Path, probe: fn(&Path) -> Result<(), crate::rootfs::StepError>) -> Probe {
    let failed = |step: &str, e: std::io::Error| Probe::Failed {
        step: step.to_string(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return failed("create the cache dir", e);
    }
    let probe_dir = dir.join(format!(".preflight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&probe_dir);
    if let Err(e) = std::fs::create_dir(&probe_dir) {
        return failed("create a probe dir", e);
    }
    let result = match probe(&probe_dir) {
        Ok(()) => Probe::Works,
        Err(e) => Probe::Failed {
            step: e.step.to_string(),
            errno: e.error.raw_os_error().unwrap_or(libc::EIO),
        },
    };
    if let Err(e) = std::fs::remove_dir_all(&probe_dir) {
        tracing::warn!(dir = %probe_dir.display(), error = %e, "cannot remove the preflight probe dir");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WORKS: AtomicUsize = AtomicUsize::new(0);
    static FAILS: AtomicUsize = AtomicUsize::new(0);

    fn works(_: &Path) -> Result<(), crate::rootfs::StepError> {
        WORKS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn fails(_: &Path) -> Result<(), crate::rootfs::StepError> {
        FAILS.fetch_add(1, Ordering::SeqCst);
        Err(crate::rootfs::StepError {
            step: "mount",
            error: std::io::Error::from_raw_os_error(libc::EPERM),
            log: String::new(),
        })
    }

    #[test]
    fn a_probe_that_worked_is_not_run_again_a_failed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            assert!(matches!(remembered(dir.path(), "w", works), Probe::Works));
            assert!(matches!(
                remembered(dir.path(), "f", fails),
                Probe::Failed {
                    errno: libc::EPERM,
                    ..
                }
            ));
        }
        assert_eq!(WORKS.load(Ordering::SeqCst), 1);
        assert_eq!(FAILS.load(Ordering::SeqCst), 3);
        // Another file system (here: another dir's record) probes again.
        let other = tempfile::tempdir().unwrap();
        remembered(other.path(), "w", works);
        assert_eq!(WORKS.load(Ordering::SeqCst), 2);
        // A record of another boot never matches.
        std::fs::write(dir.path().join(WORKED), "another-boot 1 w\n").unwrap();
        remembered(dir.path(), "w", works);
        assert_eq!(WORKS.load(Ordering::SeqCst), 3);
        let kept = std::fs::read_to_string(dir.path().join(WORKED)).unwrap();
        assert!(!kept.contains("another-boot"), "{kept}");
    }
}
