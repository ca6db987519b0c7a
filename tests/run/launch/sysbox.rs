//! The Sysbox daemons with `--runtime` a `sysbox-runc`-named wrapper
//! around runc and the daemons played by python3 scripts that serve (or do
//! not serve) their unix sockets in a temp run dir.

use crate::common::prereq::{self, Need};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::support::*;
use crate::common::layers::{can_run, error_line};

fn python_present() -> Need {
    let ok = std::process::Command::new("python3")
        .arg("-c")
        .arg("import socket")
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("python3 is needed for the fake sysbox daemons".into())
    }
}

/// A daemon that writes its pid, serves `socket` and, once `quit` exists,
/// says why on stderr and exits 1.
fn serving_daemon(path: &Path, socket: &Path, pidfile: &Path, quit: &Path) -> PathBuf {
    script(
        path,
        &format!(
            r#"#!/usr/bin/env python3
import os, socket, sys, time
if "--version" in sys.argv:
    print("fake sysbox daemon\n\tversion: 0.0.0")
    sys.exit(0)
open({pidfile:?}, "w").write(str(os.getpid()))
print("fake daemon: starting", file=sys.stderr, flush=True)
s = socket.socket(socket.AF_UNIX)
s.bind({socket:?})
s.listen(16)
s.settimeout(0.05)
while not os.path.exists({quit:?}):
    try:
        c, _ = s.accept()
        c.close()
    except socket.timeout:
        pass
print("fake daemon: lost /dev/fuse, giving up", file=sys.stderr, flush=True)
sys.exit(1)
"#
        ),
    )
}

/// A `sysbox-runc` that is runc plus what sysbox-runc adds to a bundle
/// itself (its own /proc, /sys and /dev; the bundle cvmd writes for sysbox
/// leaves them out, per the sysbox-runc contract).
const WRAPPER: &str = r#"#!/bin/sh
prev=""
for a in "$@"; do
  if [ "$prev" = "--bundle" ]; then
    python3 - "$a/config.json" <<'EOF'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["mounts"] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
] + spec.get("mounts", [])
json.dump(spec, open(path, "w"))
EOF
  fi
  prev="$a"
done
exec runc "$@"
"#;

/// The tools sysbox-mgr needs, as no-op scripts (this machine may lack
/// rsync and modprobe), and the sysbox-runc wrapper, in one bin dir.
fn bin_dir(dir: &Path) -> (PathBuf, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["rsync", "modprobe", "iptables"] {
        script(&bin.join(tool), "#!/bin/sh\nexit 0\n");
    }
    let wrapper = script(&bin.join("sysbox-runc"), WRAPPER);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (wrapper, path)
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn launch_sysbox_daemons_start_first_and_a_death_ends_the_workspace() {
    require!(can_run());
    require!(prereq::runc());
    require!(python_present());
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let (wrapper, path) = bin_dir(dir.path());
    let mgr = serving_daemon(
        &dir.path().join("sysbox-mgr"),
        &run_dir.join("sysmgr.sock"),
        &dir.path().join("mgr.pid"),
        &dir.path().join("mgr.quit"),
    );
    let fs = serving_daemon(
        &dir.path().join("sysbox-fs"),
        &run_dir.join("sysfs.sock"),
        &dir.path().join("fs.pid"),
        &dir.path().join("fs.quit"),
    );
    let termlog = dir.path().join("termination-log");
    std::fs::write(&termlog, "").unwrap();
    let reference = world.push("launch/sysbox", &busybox_image(UNTIL_TERM));
    let mut cmd = world.cvmd(
        &reference,
        &[
            "--runtime",
            wrapper.to_str().unwrap(),
            "--sysbox-mgr",
            mgr.to_str().unwrap(),
            "--sysbox-fs",
            fs.to_str().unwrap(),
            "--sysbox-run-dir",
            run_dir.to_str().unwrap(),
            "--sysbox-timeout",
            "20",
            "--termination-log",
            termlog.to_str().unwrap(),
        ],
    );
    cmd.env("PATH", &path);
    let mut run = Running::spawn(cmd);
    run.wait_for("workspace up", Duration::from_secs(60));
    let log = run.log();
    let at = |text: &str| {
        log.find(text)
            .unwrap_or_else(|| panic!("{text:?} not logged:\n{log}"))
    };
    let (mgr_up, fs_up, created) = (
        at("daemon=\"sysbox-mgr\""),
        at("daemon=\"sysbox-fs\""),
        at("created"),
    );
    assert!(
        mgr_up < fs_up && fs_up < created,
        "mgr, then fs, then the container:\n{log}"
    );
    let mgr_pid: i32 = std::fs::read_to_string(dir.path().join("mgr.pid"))
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(dir.path().join("fs.quit"), "").unwrap();
    let (status, log) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("cvmd: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    for want in [
        "sysbox-fs exited (exit code 1)",
        "likely cause",
        "fake daemon: lost /dev/fuse, giving up",
    ] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
    assert!(
        std::fs::read_to_string(&termlog)
            .unwrap()
            .contains("sysbox-fs exited"),
        "the termination log has the message"
    );
    assert!(
        crate::common::wait_until(Duration::from_secs(5), || !alive(mgr_pid)),
        "sysbox-mgr was left running"
    );
    world.assert_clean();
}

#[test]
fn launch_sysbox_mgr_exiting_at_once_names_the_cause() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, path) = bin_dir(dir.path());
    let mgr = script(
        &dir.path().join("sysbox-mgr"),
        "#!/bin/sh\necho 'sysbox-mgr: failed to set up the data root: overlayfs is not supported' >&2\nexit 1\n",
    );
    // Never started: sysbox-mgr dies first. Present, so preflight passes.
    let fs = serving_daemon(
        &dir.path().join("sysbox-fs"),
        &dir.path().join("run/sysfs.sock"),
        &dir.path().join("fs.pid"),
        &dir.path().join("fs.quit"),
    );
    let reference = world.push("launch/sysbox-dies", &busybox_image(UNTIL_TERM));
    let mut cmd = world.cvmd(
        &reference,
        &[
            "--runtime",
            wrapper.to_str().unwrap(),
            "--sysbox-mgr",
            mgr.to_str().unwrap(),
            "--sysbox-fs",
            fs.to_str().unwrap(),
            "--sysbox-run-dir",
            dir.path().join("run").to_str().unwrap(),
        ],
    );
    cmd.env("PATH", &path);
    let out = cmd.output().unwrap();
    let line = error_line(&out);
    assert!(line.contains("sysbox-mgr exited (exit code 1)"), "{line}");
    assert!(line.contains("overlayfs is not supported"), "{line}");
    assert!(line.contains("likely cause"), "{line}");
    world.assert_clean();
}

#[test]
fn launch_sysbox_without_its_tools_says_which() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = script(&bin.join("sysbox-runc"), "#!/bin/sh\nexec runc \"$@\"\n");
    let reference = world.push("launch/sysbox-tools", &busybox_image(UNTIL_TERM));
    let mut cmd = world.cvmd(
        &reference,
        &[
            "--runtime",
            wrapper.to_str().unwrap(),
            "--sysbox-run-dir",
            dir.path().join("run").to_str().unwrap(),
        ],
    );
    // Only the wrapper's dir: no rsync, modprobe or iptables.
    cmd.env("PATH", &bin);
    let out = cmd.output().unwrap();
    let line = error_line(&out);
    assert!(
        // Preflight at start or the daemon start itself: either names them.
        line.contains("rsync, modprobe, iptables"),
        "the missing tools are named: {line}"
    );
    world.assert_clean();
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn launch_sysbox_daemons_that_already_answer_are_left_alone() {
    require!(can_run());
    require!(prereq::runc());
    require!(python_present());
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let (wrapper, path) = bin_dir(dir.path());
    // Node-level daemons, started by someone else (here: the test).
    // Killed on every path, a failed assertion too: a daemon left running
    // holds the test's stdout open and hangs whoever reads it.
    let mut others = Vec::new();
    for (name, sock) in [("mgr", "sysmgr.sock"), ("fs", "sysfs.sock")] {
        let d = serving_daemon(
            &dir.path().join(format!("other-{name}")),
            &run_dir.join(sock),
            &dir.path().join(format!("{name}.pid")),
            &dir.path().join(format!("{name}.quit")),
        );
        others.push(KillOnDrop(std::process::Command::new(d).spawn().unwrap()));
    }
    assert!(crate::common::wait_until(Duration::from_secs(20), || {
        run_dir.join("sysmgr.sock").exists() && run_dir.join("sysfs.sock").exists()
    }));
    let reference = world.push("launch/sysbox-running", &busybox_image(UNTIL_TERM));
    let mut cmd = world.cvmd(
        &reference,
        &[
            "--runtime",
            wrapper.to_str().unwrap(),
            "--sysbox-mgr",
            "/nonexistent/sysbox-mgr",
            "--sysbox-fs",
            "/nonexistent/sysbox-fs",
            "--sysbox-run-dir",
            run_dir.to_str().unwrap(),
        ],
    );
    cmd.env("PATH", &path);
    let mut run = Running::spawn(cmd);
    run.wait_for("workspace up", Duration::from_secs(60));
    run.terminate();
    let (status, log) = run.finish(Duration::from_secs(30));
    drop(others);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(log.matches("already running").count(), 2, "{log}");
    world.assert_clean();
}

/// A daemon that behaves as Sysbox's do about their pid file: it refuses
/// to start while `pidfile` exists (sysbox-mgr: "program is running as pid
/// N"), else writes its pid there and serves `socket` until killed.
fn sysbox_like_daemon(path: &Path, socket: &Path, pidfile: &Path) -> PathBuf {
    script(
        path,
        &format!(
            r#"#!/usr/bin/env python3
import os, socket, sys
if "--version" in sys.argv:
    print("fake sysbox daemon\n\tversion: 0.0.0")
    sys.exit(0)
if os.path.exists({pidfile:?}):
    print("program is running as pid " + open({pidfile:?}).read().strip(), file=sys.stderr, flush=True)
    sys.exit(1)
open({pidfile:?}, "w").write(str(os.getpid()))
s = socket.socket(socket.AF_UNIX)
s.bind({socket:?})
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#
        ),
    )
}

/// A cvmd killed with its daemons leaves their pid files and sockets in the
/// run dir; the next cvmd (a restarted container on the same run dir)
/// clears them before starting the daemons, which otherwise refuse.
#[test]
fn launch_sysbox_leftovers_of_a_dead_predecessor_are_cleared() {
    require!(can_run());
    require!(prereq::runc());
    require!(python_present());
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    // What the dead predecessor left: pid files naming a pid that is alive
    // now (this test's own) and sockets nobody serves.
    for (pid, sock) in [("sysmgr.pid", "sysmgr.sock"), ("sysfs.pid", "sysfs.sock")] {
        std::fs::write(run_dir.join(pid), std::process::id().to_string()).unwrap();
        let stale = std::os::unix::net::UnixListener::bind(run_dir.join(sock)).unwrap();
        drop(stale);
    }
    let (wrapper, path) = bin_dir(dir.path());
    let mgr = sysbox_like_daemon(
        &dir.path().join("sysbox-mgr"),
        &run_dir.join("sysmgr.sock"),
        &run_dir.join("sysmgr.pid"),
    );
    let fs = sysbox_like_daemon(
        &dir.path().join("sysbox-fs"),
        &run_dir.join("sysfs.sock"),
        &run_dir.join("sysfs.pid"),
    );
    let reference = world.push("launch/sysbox-stale", &busybox_image(UNTIL_TERM));
    let mut cmd = world.cvmd(
        &reference,
        &[
            "--runtime",
            wrapper.to_str().unwrap(),
            "--sysbox-mgr",
            mgr.to_str().unwrap(),
            "--sysbox-fs",
            fs.to_str().unwrap(),
            "--sysbox-run-dir",
            run_dir.to_str().unwrap(),
            "--sysbox-timeout",
            "20",
        ],
    );
    cmd.env("PATH", &path);
    let mut run = Running::spawn(cmd);
    run.wait_for("workspace up", Duration::from_secs(60));
    let log = run.log();
    assert!(
        log.contains("removed what a daemon that is gone left behind"),
        "{log}"
    );
    let mgr_pid: i32 = std::fs::read_to_string(run_dir.join("sysmgr.pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        mgr_pid,
        std::process::id().cast_signed(),
        "a new sysbox-mgr wrote its pid"
    );
    run.terminate();
    let (status, log) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        crate::common::wait_until(Duration::from_secs(5), || !alive(mgr_pid)),
        "sysbox-mgr was left running"
    );
    world.assert_clean();
}
