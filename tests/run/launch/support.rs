//! Running `cvmd run` against the local registry with real runc, reading
//! its log as it goes.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::busybox::busybox_layer;
use crate::common::image::{Compression, Format, ImageBuilder};
use crate::common::layers::{workspace_name, CvmdOnCache, Sandbox};

/// busybox-static with the applets the tests use, /tmp, a Debian-style
/// multiarch lib dir and /mnt, running `entrypoint`.
pub fn busybox_image(entrypoint: &[&str]) -> crate::common::image::Image {
    let layer = busybox_layer(&[
        "sh", "sleep", "echo", "cat", "ls", "id", "stat", "touch", "test", "true", "false", "sed",
    ])
    .dir("tmp", 0o1777)
    .dir("mnt", 0o755)
    .dir("usr", 0o755)
    .dir("usr/lib", 0o755)
    .dir("usr/lib/x86_64-linux-gnu", 0o755);
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .entrypoint(entrypoint)
        .build()
}

/// An entrypoint that runs until SIGTERM, then exits 0 (PID 1 ignores
/// signals it has no handler for, so it traps). It prints "workspace up",
/// spelt so that the args cvmd logs do not hold that text.
pub const UNTIL_TERM: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; echo workspace $(echo up); while :; do sleep 0.1; done",
];

/// One test's world: sandboxed cache, registry, state dir.
pub struct World {
    pub sandbox: Sandbox,
    pub state: tempfile::TempDir,
    pub reg: crate::common::Registry,
}

impl World {
    pub fn new() -> World {
        World {
            sandbox: Sandbox::new(),
            state: tempfile::Builder::new()
                .prefix("cvmd-launch-")
                .tempdir()
                .unwrap(),
            reg: crate::common::Registry::plain().unwrap(),
        }
    }

    pub fn push(&self, repo: &str, img: &crate::common::image::Image) -> String {
        crate::common::layers::push(&self.reg, repo, "v1", img)
    }

    /// Unique per test and run: runc names the container's cgroup after it.
    pub fn workspace(&self) -> String {
        workspace_name(self.state.path())
    }

    /// `cvmd ... run` (runtime runc unless `extra` names one).
    pub fn cvmd(&self, reference: &str, extra: &[&str]) -> Command {
        CvmdOnCache::new(&self.sandbox.cache(), &self.reg.host()).workspace(
            self.state.path(),
            reference,
            extra,
        )
    }

    /// Nothing mounted under the state dir, nothing left in the runtime's root.
    pub fn assert_clean(&self) {
        crate::common::layers::assert_state_clean(self.state.path());
    }
}

/// A running cvmd whose stderr is collected as it comes.
pub struct Running {
    pub child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    /// A test that failed half-way must not leave cvmd running (with its
    /// container and mounts): SIGTERM lets it clean up, SIGKILL follows.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            if !crate::common::wait_until(Duration::from_secs(30), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cvmd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Running {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `text`; panics with the log if it never does.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) {
        let found = crate::common::wait_until(timeout, || {
            self.log().contains(text) || matches!(self.child.try_wait(), Ok(Some(_)))
        });
        // A last look: cvmd may have logged it and exited.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            found && self.log().contains(text),
            "cvmd never logged {text:?}:\n{}",
            self.log()
        );
    }

    pub fn terminate(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id().cast_signed()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits for cvmd to exit (killing it after `timeout`): its status and log.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, String) {
        if !crate::common::wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log())
    }
}

/// Writes an executable script.
pub fn script(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// Lines of the workspace's own output in cvmd's log.
pub fn workspace_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("workspace:") || l.contains("bootstrap:"))
        .map(str::to_string)
        .collect()
}
