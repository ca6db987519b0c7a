//! systemd as the workspace's PID 1 under real runc (standing in for
//! sysbox-runc) with the default settings, so in a user namespace of the
//! workspace's own ID range with a seccomp filter and its cgroups
//! delegated: `cvmd run` of a debootstrap'd Debian bookworm boots to
//! `running` (or `degraded`), and SIGTERM to cvmd halts it through the
//! image's stop signal (SIGRTMIN+3) well within the grace period, cvmd
//! exits 0, and no mount, runtime container or cgroup is left behind.
//!
//! The image is the project's example systemd image, built by
//! `images/build.sh` (debootstrap, umoci, skopeo; cached, see
//! `crate::common::debootstrap`), with its masked units and stop signal: what
//! passes here is what users get.
//!
//! Needs root, runc, docker-registry and the build script's tools with a
//! reachable Debian mirror; skips with a reason otherwise.

use crate::common::prereq;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::layers::*;
use crate::common::{debootstrap, Registry};

/// Unique per run: runc names the container's cgroup after it, and other
/// checkouts may run this test at the same time.
static WORKSPACE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("ws-systemd-{}", std::process::id()));
/// Grace period cvmd gives the stop signal before SIGKILL.
const GRACE: Duration = Duration::from_secs(20);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn runc_at(runc: &Path, root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(runc)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runc")
}

/// `systemctl is-system-running` inside the workspace, or why not.
fn system_state(runc: &Path, root: &Path) -> String {
    let out = runc_at(
        runc,
        root,
        &["exec", &WORKSPACE, "systemctl", "is-system-running"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if stdout.is_empty() {
        format!(
            "(no answer: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    } else {
        stdout
    }
}

/// The workspace's cgroup directories (v1 controllers and unified) as host
/// paths: those of its init, less the `init.scope` systemd moves itself to.
fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            let dir = match ctrl {
                "" => "unified".to_string(),
                c => c
                    .strip_prefix("name=")
                    .unwrap_or(c)
                    .split(',')
                    .next()?
                    .to_string(),
            };
            let path = path.trim_end_matches("/init.scope");
            let base = Path::new("/sys/fs/cgroup").join(dir);
            base.exists()
                .then(|| base.join(path.trim_start_matches('/')))
        })
        .collect()
}

#[test]
fn systemd_boots_under_runc_and_halts_on_sigterm_root() {
    require!(can_run());
    let runc = require!(prereq::runc());
    require!(debootstrap::available());
    let started = Instant::now();
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let runtime_root = state.path().join("runtime");
    let reg = Registry::plain().unwrap();
    let reference =
        debootstrap::build_and_push("systemd", &format!("{}/examples", reg.host()), None);
    eprintln!("built and pushed after {:?}", started.elapsed());

    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let mut child = Command::new(crate::common::cvmd_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &cvmd.cache)
        .arg("--cache-dir")
        .arg(&cvmd.cache)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--insecure-registries", &cvmd.registry])
        .args(["--image", &reference, "--workspace", &WORKSPACE])
        .args(["--runtime", "runc"])
        // These tests run in the host's netns: a veth and NAT rules there
        // would touch the host (tests/run/network.rs covers the network).
        .args(["--network", "none"])
        .args(["--stop-timeout", &GRACE.as_secs().to_string()])
        .args(["--log-format", "text", "--log-level", "info"])
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr on a thread so a chatty boot never blocks cvmd on a full
    // pipe; the text comes back for the assertion messages.
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let pid_file = state
        .path()
        .join(format!("workspaces/{}/init.pid", *WORKSPACE));
    let mut last = String::new();
    let booted = crate::common::wait_until(BOOT_TIMEOUT, || {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        if !pid_file.exists() {
            return false;
        }
        last = system_state(&runc, &runtime_root);
        if last == "running" || last == "degraded" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    if !booted || !(last == "running" || last == "degraded") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().cast_signed()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        let _ = runc_at(&runc, &runtime_root, &["delete", "--force", &WORKSPACE]);
        panic!(
            "systemd did not reach running/degraded within {BOOT_TIMEOUT:?} (last answer {last:?}):\n{}",
            log.join().unwrap()
        );
    }
    eprintln!("systemd is {last} after {:?}", started.elapsed());
    if last == "degraded" {
        let failed = runc_at(
            &runc,
            &runtime_root,
            &["exec", &WORKSPACE, "systemctl", "--failed", "--no-legend"],
        );
        eprintln!("failed units:\n{}", String::from_utf8_lossy(&failed.stdout));
    }
    // Confined by default: a user namespace of the workspace's own ID
    // range (not the node's `0 0 4294967295`), a seccomp filter, and
    // capabilities that are the namespace's: systemd's SYS_ADMIN, none of
    // those that would act on the node.
    let cat = |path: &str| {
        let out = runc_at(&runc, &runtime_root, &["exec", &WORKSPACE, "cat", path]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let uid_map: Vec<String> = cat("/proc/1/uid_map")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        uid_map.len() == 3 && uid_map[0] == "0" && uid_map[1] != "0" && uid_map[2] == "65536",
        "systemd is not in a user namespace of its own range: uid_map {uid_map:?}"
    );
    let status = cat("/proc/1/status");
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "no seccomp filter on PID 1:\n{status}"
    );
    let cap_eff = cvmd_oci::proc_status::parse(&status)
        .expect("/proc/1/status as the kernel writes it")
        .capeff;
    let has = |name: &str| {
        let bit = cvmd::bundle::capability_bit(name).unwrap();
        cap_eff & (1 << bit) != 0
    };
    assert!(has("SYS_ADMIN") && has("NET_ADMIN"), "CapEff {cap_eff:x}");
    for node_wide in [
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_TIME",
        "MAC_ADMIN",
        "SYSLOG",
        "BPF",
    ] {
        assert!(!has(node_wide), "CapEff {cap_eff:x} has {node_wide}");
    }
    // What nested containers need passes the filter: new user, mount,
    // network, UTS, IPC and PID namespaces (clone/unshare with namespace
    // flags), a mount and a hostname inside them.
    let nested = runc_at(
        &runc,
        &runtime_root,
        &[
            "exec",
            &WORKSPACE,
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "sh",
            "-c",
            "mount -t tmpfs nested /mnt && hostname nested && echo nested-ok",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&nested.stdout).trim(),
        "nested-ok",
        "nested namespaces refused: {}",
        String::from_utf8_lossy(&nested.stderr)
    );
    // The image's masks (systemd/workspace/masked-units) are in force.
    let masked = runc_at(
        &runc,
        &runtime_root,
        &[
            "exec",
            &WORKSPACE,
            "systemctl",
            "is-enabled",
            "sys-kernel-debug.mount",
            "console-getty.service",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&masked.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["masked", "masked"],
        "units the image masks are not masked"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cgroups = cgroup_dirs(pid);
    assert!(
        cgroups.iter().any(|d| d.is_dir()),
        "init {pid}'s cgroup dirs are not where expected: {cgroups:?}"
    );

    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let log = log.join().unwrap();
    eprintln!("cvmd exited {status} {took:?} after SIGTERM");
    assert!(
        took < GRACE,
        "systemd took {took:?}, not within the {GRACE:?} grace period: it was SIGKILLed\n{log}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "systemd halted by SIGRTMIN+3 exits 0, and so does cvmd\n{log}"
    );

    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state_str = state.path().to_str().unwrap();
    let left: Vec<_> = info.lines().filter(|l| l.contains(state_str)).collect();
    assert!(
        left.is_empty(),
        "mounts left under the state dir: {left:#?}"
    );
    let list = runc_at(&runc, &runtime_root, &["list", "-q"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).trim().is_empty(),
        "runc still lists: {}",
        String::from_utf8_lossy(&list.stdout)
    );
    let cg_left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    assert!(cg_left.is_empty(), "cgroups left: {cg_left:?}");
    sandbox.assert_outside_untouched();
    eprintln!("whole test took {:?}", started.elapsed());
}
