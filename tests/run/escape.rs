//! The known ways out of a container, tried as root inside real `cvmd run`
//! workspaces under runc with the default settings: the example systemd
//! image (built by `images/build.sh`, systemd as PID 1 with its extra
//! capabilities) and a busybox image. Every attempt must fail, and each
//! assertion says how (the errno the kernel or the seccomp filter gave).
//!
//! The attempts are made by a small static C program
//! (tests/run/escape_support/attempt.c, built with gcc here) bound into the
//! workspace read-only through CVMD_MOUNTS, beside a file for
//! `open_by_handle_at`. A process of the outer machine is put into the
//! workspace's PID namespace only (nsenter), as a debugger or a sidecar
//! could be: the workspace must neither trace it nor walk through its
//! `/proc/PID/root` to cvmd's socket, the node cache, the pull secret or
//! the termination log.
//!
//! Needs root, runc, gcc with a static libc, nsenter, docker-registry and,
//! for the systemd image, the build script's tools; under `CI=true` a
//! missing one fails the test, elsewhere it is skipped with the reason.

use crate::common::busybox::busybox_layer;
use crate::common::prereq::{self, Need};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::image::{Compression, Format, ImageBuilder};
use crate::common::layers::*;
use crate::common::{debootstrap, Registry};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// In the outer process's command line, to find it from inside.
const MARKER: &str = "4242.0424";

/// The attempt program, built static into `dir`.
fn build_attempts(dir: &Path) -> Need {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run/escape_support/attempt.c");
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(dir.join("attempt"))
        .arg(&src)
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "gcc cannot build {} statically (apt-get install gcc libc6-dev): {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("gcc is not installed (apt-get install gcc): {e}")),
    }
}

/// busybox-static with a shell and `sleep`, run as the workspace's command.
fn busybox_image() -> crate::common::image::Image {
    busybox_image_with(None)
}

/// [`busybox_image`], with `extra` as a second layer.
pub(super) fn busybox_image_with(
    extra: Option<crate::common::image::LayerBuilder>,
) -> crate::common::image::Image {
    let layer = busybox_layer(&["sh", "sleep", "cat"])
        .dir("tmp", 0o1777)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    let mut image = ImageBuilder::new(Format::Oci).layer(layer.build(Compression::Gzip));
    if let Some(extra) = extra {
        image = image.layer(extra.build(Compression::Gzip));
    }
    image.entrypoint(&["/bin/sleep", "3600"]).build()
}

/// A `cvmd run` workspace with the attempt program at /escape, killed and
/// cleaned up when dropped.
pub(super) struct Workspace {
    pub(super) cvmd: Child,
    outside: Option<Child>,
    runc: PathBuf,
    pub(super) state: tempfile::TempDir,
    /// What lives outside the workspace and must stay out of reach.
    pub(super) secrets: Secrets,
    _tools: tempfile::TempDir,
    _secret_dir: tempfile::TempDir,
}

pub(super) struct Secrets {
    socket: PathBuf,
    cache: PathBuf,
    pull_secret: PathBuf,
    termination_log: PathBuf,
    /// More, named: a lazy start's FUSE lower dirs and chunk cache.
    pub(super) more: Vec<(&'static str, PathBuf)>,
}

impl Secrets {
    fn all(&self) -> Vec<(&'static str, &Path)> {
        let mut all: Vec<(&'static str, &Path)> = vec![
            ("control socket", &self.socket),
            ("node cache", &self.cache),
            ("pull secret", &self.pull_secret),
            ("termination log", &self.termination_log),
        ];
        all.extend(self.more.iter().map(|(what, p)| (*what, p.as_path())));
        all
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(mut o) = self.outside.take() {
            let _ = o.kill();
            let _ = o.wait();
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.cvmd.id().cast_signed()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let ended = crate::common::wait_until(Duration::from_secs(30), || {
            self.cvmd.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = self.cvmd.kill();
            let _ = self.cvmd.wait();
        }
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(self.state.path().join("runtime"))
            .args(["delete", "--force", &workspace_name(self.state.path())])
            .output();
    }
}

impl Workspace {
    /// Starts `reference` and waits until its init runs (and, with
    /// `systemd`, until systemd answers `running` or `degraded`).
    /// `registry` is the `host:port` the reference names (the registry, or
    /// a proxy in front of it).
    pub(super) fn start(
        sandbox: &Sandbox,
        registry: &str,
        reference: &str,
        systemd: bool,
    ) -> Need<Self> {
        let runc = prereq::runc()?;
        let tools = tempfile::Builder::new()
            .prefix("cvmd-escape-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            tools.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        build_attempts(tools.path())?;
        std::fs::write(tools.path().join("bound"), b"a file of the outer machine\n").unwrap();
        let state = tempfile::tempdir().unwrap();
        let secret_dir = tempfile::tempdir().unwrap();
        let pull_secret = secret_dir.path().join("pull-secret.json");
        std::fs::write(
            &pull_secret,
            br#"{"auths":{"registry.invalid":{"auth":"ZXNjYXBlOnNlY3JldA=="}}}"#,
        )
        .unwrap();
        let termination_log = secret_dir.path().join("termination-log");
        std::fs::write(&termination_log, b"").unwrap();
        let secrets = Secrets {
            socket: state.path().join("cvmd.sock"),
            cache: sandbox.cache(),
            pull_secret: pull_secret.clone(),
            termination_log: termination_log.clone(),
            more: Vec::new(),
        };
        let cvmd = CvmdOnCache::new(&sandbox.cache(), registry);
        let mounts = format!("{}:/escape:ro", tools.path().display());
        let child = cvmd
            .workspace(
                state.path(),
                reference,
                &[
                    "--mounts",
                    &mounts,
                    "--pull-secret",
                    pull_secret.to_str().unwrap(),
                    "--termination-log",
                    termination_log.to_str().unwrap(),
                    "--stop-timeout",
                    "10",
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut ws = Workspace {
            cvmd: child,
            outside: None,
            runc,
            state,
            secrets,
            _tools: tools,
            _secret_dir: secret_dir,
        };
        let pid_file = ws
            .state
            .path()
            .join(format!("workspaces/{}/init.pid", ws.name()));
        let mut last = String::new();
        let up = crate::common::wait_until(BOOT_TIMEOUT, || {
            if ws.cvmd.try_wait().unwrap().is_some() || !pid_file.exists() {
                return ws.cvmd.try_wait().unwrap().is_some();
            }
            if !systemd {
                return ws.exec(&["/escape/attempt", "read", "/"]).contains("ok");
            }
            last = ws
                .exec(&["systemctl", "is-system-running"])
                .trim()
                .to_string();
            std::thread::sleep(Duration::from_millis(200));
            last == "running" || last == "degraded"
        });
        assert!(
            up && ws.cvmd.try_wait().unwrap().is_none(),
            "the workspace did not come up within {BOOT_TIMEOUT:?} (systemd said {last:?})"
        );
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // An outer process in the workspace's PID namespace only.
        let outside = Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--pid", "--", "sleep", MARKER])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nsenter is not installed (util-linux): {e}"));
        ws.outside = Some(outside?);
        std::thread::sleep(Duration::from_millis(300));
        Ok(ws)
    }

    pub(super) fn name(&self) -> String {
        workspace_name(self.state.path())
    }

    /// `args` run as root inside the workspace (runc exec: the workspace's
    /// namespaces, capabilities and seccomp filter); stdout and stderr.
    pub(super) fn exec(&self, args: &[&str]) -> String {
        let out = Command::new(&self.runc)
            .arg("--root")
            .arg(self.state.path().join("runtime"))
            .args(["exec", &self.name()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("runc exec");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub(super) fn attempt(&self, args: &[&str]) -> String {
        let mut all = vec!["/escape/attempt"];
        all.extend_from_slice(args);
        let out = self.exec(&all);
        eprintln!("attempt {args:?}:\n{out}");
        out
    }
}

/// The line of `out` that starts with `what: `, its answer.
pub(super) fn answer<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(what).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no answer for {what:?} in:\n{out}"))
}

/// What went other than expected; all of them are reported at the end, so
/// one run shows every way out.
#[derive(Default)]
pub(super) struct Findings(pub(super) Vec<String>);

impl Findings {
    pub(super) fn answer(&mut self, out: &str, what: &str, expected: &[&str]) {
        self.answer_about(out, what, what, expected);
    }

    /// As `answer`, the finding named `about` (what was reached).
    fn answer_about(&mut self, out: &str, what: &str, about: &str, expected: &[&str]) {
        let got = answer(out, what);
        if !expected.contains(&got) {
            self.0.push(format!(
                "{about}: expected {expected:?}, got {got} (an \"ok\" is a way out)"
            ));
        }
    }

    pub(super) fn check(&mut self, ok: bool, what: String) {
        if !ok {
            self.0.push(what);
        }
    }
}

/// The device numbers of the outer machine's root file system.
fn root_device() -> (u64, u64) {
    let st = nix::sys::stat::stat("/").unwrap();
    (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    )
}

/// Every attempt, against one workspace.
pub(super) fn try_every_way_out(ws: &Workspace) {
    let mut f = Findings::default();
    // Confined at all: a user namespace of its own range, a seccomp
    // filter, capabilities that are the namespace's.
    let status = ws.exec(&["cat", "/proc/1/status"]);
    let uid_map = ws.exec(&["cat", "/proc/1/uid_map"]);
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    f.check(
        fields.len() == 3 && fields[0] == "0" && fields[1] != "0" && fields[2] == "65536",
        format!("not a user namespace of its own 65536 IDs: uid_map {uid_map:?}"),
    );
    f.check(
        status.lines().any(|l| l == "Seccomp:\t2"),
        format!(
            "no seccomp filter on the workspace's init: {:?}",
            status.lines().find(|l| l.starts_with("Seccomp:"))
        ),
    );

    // cgroup v1 release_agent.
    let out = ws.attempt(&["cgroup", "/tmp/escape-cg"]);
    // Root with a namespaced SYS_ADMIN (systemd's) may mount an existing
    // hierarchy: rooted at its own cgroup namespace, without the
    // hierarchy root's release_agent. A new hierarchy (whose root it
    // would be) only the node's root may mount.
    f.answer(&out, "mount cgroup v1 memory", &["EPERM", "ok"]);
    if answer(&out, "mount cgroup v1 memory") == "ok" {
        f.answer(
            &out,
            "open memory hierarchy's release_agent for writing",
            &["ENOENT"],
        );
    }
    f.answer(&out, "mount cgroup v1 named hierarchy", &["EPERM"]);
    f.answer(
        &out,
        "open new hierarchy's release_agent for writing",
        &["ENOENT"],
    );
    for line in out
        .lines()
        .filter(|l| l.contains("/release_agent for writing"))
    {
        f.check(
            !line.ends_with(": ok"),
            format!("release_agent writable: {line}"),
        );
    }

    // open_by_handle_at on a bind-mounted file (and a forged root handle).
    let out = ws.attempt(&["handle", "/escape/bound"]);
    f.answer(&out, "name_to_handle_at", &["EPERM"]);
    f.answer(
        &out,
        "open_by_handle_at (the file's own handle)",
        &["EPERM"],
    );
    f.answer(
        &out,
        "open_by_handle_at (forged handle of the outer root inode 2)",
        &["EPERM"],
    );

    // The outer root file system's block device: mknod, open, mount.
    let (maj, min) = root_device();
    let out = ws.attempt(&[
        "blockdev",
        &maj.to_string(),
        &min.to_string(),
        "/tmp/escape-mnt",
    ]);
    f.answer(&out, "mknod block device", &["EPERM"]);
    f.answer(&out, "open block device", &["ENOENT"]);
    f.answer(&out, "mount block device", &["EPERM"]);

    // /proc/sysrq-trigger (where the kernel has it), /proc/sys (the
    // core_pattern escape) and /sys: read-only mounts, and files of the
    // node's root. Root with a namespaced SYS_ADMIN may remount its own
    // mount namespace's /proc/sys and /sys read-write; the files stay
    // unwritable.
    let mut writable = vec![
        ("/proc/sys", "/proc/sys/kernel/core_pattern"),
        ("/sys", "/sys/kernel/profiling"),
    ];
    if Path::new("/proc/sysrq-trigger").exists() {
        writable.push(("/proc/sysrq-trigger", "/proc/sysrq-trigger"));
    }
    for (mount, file) in writable {
        let out = ws.attempt(&["open-w", file]);
        let what = format!("open {file} for writing");
        f.answer(&out, &what, &["EROFS", "EACCES"]);
        let out = ws.attempt(&["remount-rw", mount]);
        let remount = format!("remount {mount} read-write");
        f.answer(&out, &remount, &["EPERM", "ok"]);
        if answer(&out, &remount) == "ok" {
            // Writable mount now; sysfs's own superblock stays read-only
            // (EROFS), procfs's files stay the node root's (EACCES).
            let out = ws.attempt(&["open-w", file]);
            f.answer(&out, &what, &["EROFS", "EACCES"]);
        }
    }

    // Kernel modules, kexec, the clock, swap, accounting, quotas, I/O
    // ports, the kernel log, keys, userfaultfd, bpf, perf: the filter.
    let out = ws.attempt(&["syscalls"]);
    for call in [
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "perf_event_open",
        "bpf",
        "clock_settime",
        "settimeofday",
        "adjtimex",
        "swapon",
        "swapoff",
        "acct",
        "quotactl",
        "iopl",
        "ioperm",
        "syslog",
        "userfaultfd",
        "request_key",
        "add_key",
        "open_by_handle_at",
        "name_to_handle_at",
    ] {
        f.answer(&out, call, &["EPERM"]);
    }

    // cvmd's socket, the cache, the pull secret, the termination log: not
    // in the workspace's tree, and not through an outer process's root.
    for (what, path) in ws.secrets.all() {
        let p = path.to_str().unwrap();
        let out = ws.attempt(&["read", p]);
        f.answer_about(
            &out,
            &format!("open {p}"),
            &format!("{what} at {p}"),
            &["ENOENT"],
        );
    }
    let mut args = vec!["outside".to_string(), MARKER.to_string()];
    args.extend(
        ws.secrets
            .all()
            .iter()
            .map(|(_, p)| p.to_str().unwrap().to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ws.attempt(&args);
    assert!(
        out.contains("outside process in view"),
        "the outer process is not in the workspace's PID namespace:\n{out}"
    );
    f.answer(&out, "ptrace attach", &["EPERM"]);
    for (what, path) in ws.secrets.all() {
        f.answer_about(
            &out,
            &format!("open outside {}", path.display()),
            &format!("{what} through the outer process's root"),
            &["EACCES"],
        );
    }
    assert!(
        f.0.is_empty(),
        "ways out of the workspace:\n{}",
        f.0.join("\n")
    );
}

#[test]
fn escapes_fail_from_the_systemd_example_image_root() {
    require!(can_run());
    require!(prereq::runc());
    require!(debootstrap::available());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference =
        debootstrap::build_and_push("systemd", &format!("{}/examples", reg.host()), None);
    let ws = require!(Workspace::start(&sandbox, &reg.host(), &reference, true));
    try_every_way_out(&ws);
    drop(ws);
    sandbox.assert_outside_untouched();
}

#[test]
fn escapes_fail_from_a_busybox_image_root() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "escape/busybox", "v1", &busybox_image());
    let ws = require!(Workspace::start(&sandbox, &reg.host(), &reference, false));
    try_every_way_out(&ws);
    drop(ws);
    sandbox.assert_outside_untouched();
}
