//! The pieces of `tests/api/control_api.rs`: a chatty busybox workspace, a
//! `cvmd run` that stops itself when a test fails, `cvmctl` as root or as
//! another user.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::busybox::busybox_image;
use crate::common::image::{Compression, Format, ImageBuilder, LayerBuilder};
use crate::common::layers::CvmdOnCache;

/// A workspace that prints a numbered line every 200 ms and exits 3 on
/// SIGTERM (sh as PID 1 gets the signal because it traps it).
pub fn chatty_image() -> crate::common::image::Image {
    busybox_image(
        &["sh", "sleep", "echo", "cat", "stty", "tty"],
        &[
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 3' TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
        ],
    )
}

/// A running `cvmd run`. Dropped without [`Running::finish`] (a failed
/// assertion), it stops cvmd before its state dir is removed: a live
/// workspace's mount and runtime state must not be deleted under it.
pub struct Running {
    child: Option<Child>,
    pub state: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = stop(child);
        }
    }
}

/// SIGTERM to cvmd, SIGKILL if it has not ended after the stop timeout
/// and some; returns its output.
pub fn stop(mut child: Child) -> Output {
    let pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
    if child.try_wait().unwrap().is_none() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    child.wait_with_output().unwrap()
}

pub fn start_cvmd(cvmd: &CvmdOnCache, reference: &str, extra: &[&str]) -> Running {
    let state = tempfile::Builder::new()
        .prefix("cvmd-api-")
        .tempdir()
        .unwrap();
    // Reachable for the non-root peer of the permission test; the socket's
    // own mode is what guards it.
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // What a crashed cvmd leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(state.path().join("cvmd.sock")).unwrap());
    spawn_on(cvmd, state, reference, extra)
}

/// Starts `cvmd run` on `state` and waits for its socket to answer.
fn spawn_on(
    cvmd: &CvmdOnCache,
    state: tempfile::TempDir,
    reference: &str,
    extra: &[&str],
) -> Running {
    let mut args = vec!["--stop-timeout", "5"];
    args.extend_from_slice(extra);
    let child = cvmd
        .workspace(state.path(), reference, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = Running {
        child: Some(child),
        socket: state.path().join("cvmd.sock"),
        state,
    };
    assert!(
        crate::common::wait_until(Duration::from_secs(20), || {
            running.run(&["status"]).status.code() == Some(0)
        }),
        "cvmd never answered on its socket (a stale one must be replaced)"
    );
    running
}

impl Running {
    pub fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::common::cvmctl_bin());
        c.env_clear()
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.ctl(args).output().unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn wait_for(
        &self,
        what: &str,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never {what}: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `within` for cvmd to end on its own (SIGTERM after
    /// that, as [`Running::finish`]); returns its exit code, its stderr and
    /// whether it ended on its own.
    // Only tests/api/vm_lifecycle.rs waits for a workspace that ends itself.
    #[allow(dead_code)]
    pub fn wait_exit(mut self, within: Duration) -> (Option<i32>, String, bool) {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + within;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let on_its_own = child.try_wait().unwrap().is_some();
        let (code, stderr) = self.finish();
        (code, stderr, on_its_own)
    }

    /// SIGKILLs cvmd mid-run, leaving whatever it had made (mounts, the
    /// container), and starts another on the same state dir, as the
    /// pod's restart would; returns the first one's stderr too.
    // Only tests/run/lazy.rs kills a cvmd.
    #[allow(dead_code)]
    pub fn kill_and_restart(
        mut self,
        cvmd: &CvmdOnCache,
        reference: &str,
        extra: &[&str],
    ) -> (Running, String) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let state = std::mem::replace(&mut self.state, tempfile::tempdir().unwrap());
        let running = spawn_on(cvmd, state, reference, extra);
        (running, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Ends cvmd (SIGTERM) if the test left it running, checks it left
    /// nothing behind, and returns its exit code and stderr.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let out = stop(self.child.take().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let state = self.state.path().to_path_buf();
        if std::panic::catch_unwind(|| assert_clean(&state)).is_err() {
            panic!("cvmd left its state dir unclean; its log:\n{stderr}");
        }
        (out.status.code(), stderr)
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_clean(state: &Path) {
    crate::common::layers::assert_state_clean(state);
    assert!(
        !state.join("cvmd.sock").exists(),
        "the socket is removed at exit"
    );
}

pub fn line_number(line: &str) -> Option<u64> {
    line.trim().strip_prefix("line ")?.parse().ok()
}

/// Runs `cvmctl` as uid 65534 with the given gid and supplementary groups.
pub fn as_nobody(cmd: &mut Command, gid: u32, groups: &[u32]) {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (setgroups, setgid, setuid), and `groups` was allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
