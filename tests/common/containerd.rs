//! A private containerd for one test: one of Debian's `containerd` builds
//! (bookworm's 1.6 from apt; trixie's 1.7 and sid's 2.x, which
//! scripts/deps.sh unpacks under /opt/cvmd-tools/containerd) with its own
//! root, state dir and socket in a temp dir, the CRI plugin and the
//! snapshotters it does not need disabled; `ctr` to look inside it.
//! Stopped (SIGKILL) and its temp dir removed on drop, with any mount it
//! left under that dir detached first.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const NAMESPACE: &str = "cvmd";

/// The containerd releases the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Debian 12's 1.6: no transfer service.
    Bookworm,
    /// Debian 13's 1.7: the first with the transfer service.
    Trixie,
    /// Debian unstable's 2.x.
    Sid,
}

impl Release {
    pub fn bin_dir(self) -> PathBuf {
        let root = std::env::var_os("CVMD_TOOLS_CONTAINERD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/cvmd-tools/containerd"));
        match self {
            Release::Bookworm => PathBuf::from("/usr/bin"),
            Release::Trixie => root.join("trixie/usr/bin"),
            Release::Sid => root.join("sid/usr/bin"),
        }
    }

    pub fn has_transfer_service(self) -> bool {
        self != Release::Bookworm
    }

    /// This release, installed.
    pub fn present(self) -> crate::common::prereq::Need {
        let dir = self.bin_dir();
        if dir.join("containerd").exists() && dir.join("ctr").exists() {
            Ok(())
        } else {
            Err(format!(
                "containerd ({self:?}) is not installed in {} (bash scripts/deps.sh installs it)",
                dir.display()
            ))
        }
    }
}

pub fn containerd_present() -> crate::common::prereq::Need {
    Release::Bookworm.present()
}

pub struct PrivateContainerd {
    pub dir: tempfile::TempDir,
    pub release: Release,
    child: Option<Child>,
}

impl PrivateContainerd {
    pub fn start() -> PrivateContainerd {
        PrivateContainerd::start_release(Release::Bookworm)
    }

    pub fn start_release(release: Release) -> PrivateContainerd {
        PrivateContainerd::start_trusting(release, None)
    }

    /// With `ca` as the only root containerd trusts (Go reads
    /// SSL_CERT_FILE): a registry the node's roots would trust.
    pub fn start_trusting(release: Release, ca: Option<&Path>) -> PrivateContainerd {
        PrivateContainerd::start_configured(release, ca, "")
    }

    /// With `extra` appended to its config.toml (plugin sections).
    pub fn start_configured(release: Release, ca: Option<&Path>, extra: &str) -> PrivateContainerd {
        let dir = tempfile::Builder::new()
            .prefix("cvmd-ctd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
{extra}"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut command = Command::new(release.bin_dir().join("containerd"));
        if let Some(ca) = ca {
            command.env("SSL_CERT_FILE", ca);
        }
        let child = command
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = PrivateContainerd {
            dir,
            release,
            child: Some(child),
        };
        let up = crate::common::wait_until(Duration::from_secs(20), || {
            c.ctr(&["version"]).status.success()
        });
        assert!(up, "containerd did not start:\n{}", c.log());
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, in cvmd's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.release.bin_dir().join("ctr"))
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Lines of `ctr ARGS -q`.
    pub fn list(&self, args: &[&str]) -> Vec<String> {
        let mut all = args.to_vec();
        all.push("-q");
        let out = self.ctr(&all);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Snapshot names (ctr has no -q for snapshots: the first column).
    pub fn snapshots(&self) -> Vec<String> {
        let out = self.ctr(&["snapshots", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.kill();
        detach_mounts_under(self.dir.path());
    }
}

/// Detaches every mount under `dir` (deepest first), so the temp dir can go.
pub fn detach_mounts_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}
