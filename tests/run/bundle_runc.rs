//! The bundle cvmd writes, run by the real `runc` over a busybox-static
//! rootfs: the process, its exit status, and the keep-alive's answer to
//! SIGTERM. Needs root and runc; skips with a reason otherwise.

use crate::common::prereq::{self, Need};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cvmd::bundle::{write_bundle, BundleInput, ImageRun, RuntimeFlavor};

/// runc and busybox, and root to run them.
fn tools() -> Need<(PathBuf, PathBuf)> {
    prereq::root("runc creates namespaces and cgroups")?;
    Ok((prereq::runc()?, prereq::busybox()?))
}

/// A busybox-static rootfs: /bin/busybox with its applets as links.
fn busybox_rootfs(dir: &Path, busybox: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "cat", "id", "ls"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

struct Runc {
    bin: PathBuf,
    root: PathBuf,
    id: String,
}

impl Runc {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn runc_runs_the_image_command_and_returns_its_status_needs_root() {
    let (runc, busybox) = require!(tools());
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    busybox_rootfs(&rootfs, &busybox);
    let mut input = BundleInput::new("test/busybox", &rootfs, RuntimeFlavor::Runc);
    input.image_run = ImageRun {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["echo ok; echo home=$HOME; exit 3".into()],
        ..ImageRun::default()
    };
    let bundle = t.path().join("bundle");
    let info = write_bundle(&bundle, &input).unwrap();
    assert!(!info.init);
    let r = Runc {
        bin: runc,
        root: t.path().join("runc-root"),
        id: format!("cvmd-bundle-{}-a", std::process::id()),
    };
    let out = r
        .cmd()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&r.id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "ok\nhome=/root\n", "stderr: {stderr}");
}

#[test]
fn runc_keepalive_stops_on_sigterm_needs_root() {
    let (runc, busybox) = require!(tools());
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    busybox_rootfs(&rootfs, &busybox);
    // No entrypoint, no cmd, no init: the keep-alive shell runs.
    let input = BundleInput::new("test/empty", &rootfs, RuntimeFlavor::Runc);
    let bundle = t.path().join("bundle");
    let info = write_bundle(&bundle, &input).unwrap();
    assert_eq!(info.args[0], "/bin/sh");
    assert_eq!(info.stop_signal, 15);
    let r = Runc {
        bin: runc,
        root: t.path().join("runc-root"),
        id: format!("cvmd-bundle-{}-b", std::process::id()),
    };
    let mut child = r
        .cmd()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&r.id)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it runs, then send the stop signal as the supervisor will.
    let start = Instant::now();
    loop {
        let state = r.cmd().args(["state", &r.id]).output().unwrap();
        if String::from_utf8_lossy(&state.stdout).contains("\"running\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "container never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let kill = r
        .cmd()
        .args(["kill", &r.id, &info.stop_signal.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keep-alive ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // `trap exit TERM` exits with the interrupted wait's status, 128+15.
    assert_eq!(status.code(), Some(143));
}

/// Shifts every owner under `dir` by `by` (the rootfs of a mapped container).
fn chown_tree(dir: &Path, by: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).unwrap();
    std::os::unix::fs::lchown(dir, Some(meta.uid() + by), Some(meta.gid() + by)).unwrap();
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), by);
        }
    }
}

#[test]
fn runc_runs_a_mapped_bundle_in_a_user_namespace_needs_root() {
    let (runc, busybox) = require!(tools());
    let t = tempfile::tempdir().unwrap();
    // The mapped root must be able to reach the rootfs.
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let rootfs = t.path().join("rootfs");
    busybox_rootfs(&rootfs, &busybox);
    chown_tree(&rootfs, 100000);
    let mut input = BundleInput::new("test/busybox", &rootfs, RuntimeFlavor::Runc);
    input.idmap = Some(cvmd::rootfs::IdMap {
        host_uid: 100000,
        host_gid: 100000,
        size: 65536,
    });
    input.image_run.cmd = vec![
        "/bin/sh".into(),
        "-c".into(),
        "id -u; cat /proc/self/uid_map; exit 0".into(),
    ];
    let bundle = t.path().join("bundle");
    write_bundle(&bundle, &input).unwrap();
    let r = Runc {
        bin: runc,
        root: t.path().join("runc-root"),
        id: format!("cvmd-bundle-{}-c", std::process::id()),
    };
    let out = r
        .cmd()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&r.id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words, vec!["0", "0", "100000", "65536"], "{stdout}");
}
