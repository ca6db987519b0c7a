//! `systemd/cvmd@.service` under a real systemd: the project's example
//! systemd image (built by `images/build.sh`, see
//! `crate::common::debootstrap`) boots as PID 1 of a runc container that
//! shares the host's network namespace (so the test registry on 127.0.0.1
//! is reachable) and holds the test's cvmd and cvmctl, the host's runc,
//! the template unit as shipped and one env file per instance. Inside it,
//! `systemd-analyze verify` accepts the unit; `systemctl start cvmd@ws1
//! cvmd@ws2` blocks until both cvmds said READY=1 (Type=notify), each with
//! a busybox workspace running under the nested runc in its unit's
//! delegated cgroup; each unit is active with a STATUS= naming the running
//! phase; `cvmctl status` with the env file sourced and the unit's state
//! dir finds that instance's socket and reports its workspace running;
//! `systemctl stop` leaves both units inactive (result success, cvmd's exit
//! status 0) and no nested runtime container behind. Before that, a
//! workspace killed from outside makes its unit restart (Restart=on-failure)
//! back to running, the other instance untouched.
//!
//! Not covered here: sysbox-runc (the env file's default; the host
//! container has runc only), the veth network (`CVMD_NETWORK=none`: the
//! host container shares the test machine's netns), the start limit
//! and start at boot through `[Install]`.
//!
//! Needs root, runc, docker-registry and the build script's tools with a
//! reachable Debian mirror; skips with a reason otherwise.

use crate::common::prereq;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::busybox::busybox_image;
use crate::common::layers::*;
use crate::common::registry::push;
use crate::common::{debootstrap, Registry};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Two instances at once: the template's point is several workspaces per
/// host, each with its own env file and state dir over one shared cache.
const INSTANCES: [&str; 2] = ["ws1", "ws2"];

/// Every capability by its bit (linux/capability.h); the host container
/// gets those in this process's bounding set (runc fails on any other).
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn bounding_caps() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .expect("CapBnd in /proc/self/status");
    let set = u64::from_str_radix(hex.trim(), 16).unwrap();
    CAPS.iter()
        .enumerate()
        .filter(|(bit, _)| set & (1 << bit) != 0)
        .map(|(_, name)| format!("CAP_{name}"))
        .collect()
}

/// The host container ("the machine" systemd runs): no user namespace, the
/// bounding set's capabilities, no seccomp, no masked /proc paths, all
/// devices and read-write cgroups (the nested runc creates the
/// workspace's below systemd's delegated unit), the host's network.
fn host_config(rootfs: &Path, binds: &[(PathBuf, &str)], cgroup: &str) -> serde_json::Value {
    let mut mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        serde_json::json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        serde_json::json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        serde_json::json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"]}),
        serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev"]}),
        serde_json::json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}),
        serde_json::json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755"]}),
        serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    for (src, dst) in binds {
        mounts.push(serde_json::json!({"destination": dst, "type": "bind",
            "source": src, "options": ["rbind", "ro"]}));
    }
    let caps = bounding_caps();
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/sbin/init"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "container=cvmd-test"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "sdunit",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": true, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}
            ]
        }
    })
}

struct Host<'a> {
    runc: &'a Path,
    root: PathBuf,
    id: String,
}

impl Host<'_> {
    fn runc(&self, args: &[&str]) -> Output {
        Command::new(self.runc)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run runc")
    }

    /// A shell command inside the host container, with its output.
    fn sh(&self, script: &str) -> Output {
        self.runc(&["exec", &self.id, "sh", "-c", script])
    }

    fn sh_text(&self, script: &str) -> String {
        let out = self.sh(script);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Why the unit did what it did, for assertion messages.
    fn diagnosis(&self) -> String {
        self.sh_text(
            "systemctl status --no-pager 'cvmd@*'; journalctl --no-pager -n 80 -u 'cvmd@*'",
        )
    }
}

impl Drop for Host<'_> {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
    }
}

#[test]
fn template_unit_runs_a_workspace_under_real_systemd_root() {
    require!(can_run());
    let runc = require!(prereq::runc());
    require!(debootstrap::available());
    let certs = require!(prereq::installed("/etc/ssl/certs"));
    let started = Instant::now();
    let reg = Registry::plain().unwrap();
    // Built (or taken from the cache) for its layer tar: the host's rootfs.
    debootstrap::build_and_push("systemd", &format!("{}/examples", reg.host()), None);
    let tar = std::fs::read_dir(debootstrap::cache_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("bookworm-systemd-") && name.ends_with(".tar")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("images/build.sh left the systemd layer tar in its cache");
    // A workspace that ends with 0 on cvmd's SIGTERM: a clean stop.
    let reference = push(
        &reg,
        "sdunit/ws",
        "v1",
        &busybox_image(
            &["sh", "sleep"],
            &[
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 0.2; done",
            ],
        ),
    );

    let work = tempfile::Builder::new()
        .prefix("cvmd-sdunit-")
        .tempdir()
        .unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
        .output()
        .unwrap();
    assert_success(&out, "unpack the systemd image's layer");
    for dir in [
        "usr/local/bin",
        "usr/local/sbin",
        "etc/cvmd",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    // The bind targets must exist as files.
    for file in [
        "usr/local/bin/cvmd",
        "usr/local/bin/cvmctl",
        "usr/local/sbin/runc",
        "etc/systemd/system/cvmd@.service",
        "etc/cvmd/ws1.env",
        "etc/cvmd/ws2.env",
    ] {
        std::fs::write(rootfs.join(file), "").unwrap();
    }
    // As an operator would write it from systemd/cvmd-instance.env.
    let env = work.path().join("instance.env");
    std::fs::write(
        &env,
        format!(
            "CVMD_IMAGE={reference}\nCVMD_RUNTIME=runc\nCVMD_CACHE_DIR=/var/lib/cvmd\n\
             CVMD_INSECURE_REGISTRIES={}\nCVMD_NETWORK=none\nCVMD_STOP_TIMEOUT=10\n\
             CVMD_LOG_FORMAT=json\n",
            reg.host()
        ),
    )
    .unwrap();
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/cvmd@.service");
    let binds = [
        (crate::common::cvmd_bin(), "/usr/local/bin/cvmd"),
        (crate::common::cvmctl_bin(), "/usr/local/bin/cvmctl"),
        (runc.clone(), "/usr/local/sbin/runc"),
        (unit, "/etc/systemd/system/cvmd@.service"),
        (env.clone(), "/etc/cvmd/ws1.env"),
        (env, "/etc/cvmd/ws2.env"),
        // The example image is minbase (no ca-certificates); a real host
        // has them (without, cvmd trusts only CVMD_EXTRA_CERTS and warns:
        // tests/pull/auth.rs).
        (certs, "/etc/ssl/certs"),
    ];
    let id = format!("cvmd-sdunit-{}", std::process::id());
    let bundle = work.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&host_config(&rootfs, &binds, &format!("/{id}"))).unwrap(),
    )
    .unwrap();
    let host = Host {
        runc: &runc,
        root: work.path().join("runc"),
        id,
    };
    let bundle_arg = bundle.to_str().unwrap();
    let out = host.runc(&["run", "--detach", "--bundle", bundle_arg, &host.id]);
    assert_success(&out, "runc run of the systemd host container");

    let mut last = String::new();
    let booted = crate::common::wait_until(BOOT_TIMEOUT, || {
        last = host
            .sh_text("systemctl is-system-running")
            .trim()
            .to_string();
        if last == "running" || last == "degraded" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    assert!(
        booted,
        "systemd did not boot within {BOOT_TIMEOUT:?}: {last:?}"
    );
    eprintln!("host systemd is {last} after {:?}", started.elapsed());

    // The shipped template as systemd itself parses it: no unknown or
    // misplaced settings.
    let verify = host.sh("systemd-analyze verify /etc/systemd/system/cvmd@ws1.service");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );

    // Type=notify: start returns once both said READY=1, or fails.
    let units = INSTANCES.map(|i| format!("cvmd@{i}")).join(" ");
    let t0 = Instant::now();
    let start = host.sh(&format!(
        "systemctl daemon-reload && timeout 120 systemctl start {units}"
    ));
    assert!(
        start.status.success(),
        "systemctl start {units} failed: {}\n{}",
        String::from_utf8_lossy(&start.stderr),
        host.diagnosis()
    );
    eprintln!("systemctl start {units} returned after {:?}", t0.elapsed());

    // Each instance: its own workspace, state dir and socket.
    for inst in INSTANCES {
        let show = host.sh_text(&format!(
            "systemctl show cvmd@{inst} -p ActiveState,SubState,StatusText,Type,MainPID"
        ));
        assert!(
            show.lines().any(|l| l == "ActiveState=active"),
            "unit not active after start:\n{show}\n{}",
            host.diagnosis()
        );
        eprintln!("{show}");
        assert!(show.lines().any(|l| l == "Type=notify"), "{show}");
        let status_text = show
            .lines()
            .find_map(|l| l.strip_prefix("StatusText="))
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            status_text.contains("running"),
            "STATUS= does not name the running phase:\n{show}"
        );

        // The unit's state dir is what cvmctl needs beside the env file (the
        // unit's own comment says so).
        let ctl = host.sh(&format!(
            "set -a; . /etc/cvmd/{inst}.env; CVMD_STATE_DIR=/var/lib/cvmd-state/{inst} cvmctl status"
        ));
        let ctl_out = String::from_utf8_lossy(&ctl.stdout).into_owned();
        assert!(
            ctl.status.success(),
            "cvmctl status in the host: {}\n{ctl_out}\n{}",
            ctl.status,
            String::from_utf8_lossy(&ctl.stderr)
        );
        // Not a terminal: one JSON object.
        let ctl_status: serde_json::Value = serde_json::from_str(&ctl_out)
            .unwrap_or_else(|e| panic!("cvmctl status is not JSON: {e}: {ctl_out}"));
        assert_eq!(ctl_status["phase"], "running", "{ctl_out}");
        assert_eq!(ctl_status["workspace"], inst, "{ctl_out}");

        // The workspace runs under the nested runc, in the unit's delegated
        // cgroup (Delegate=yes), with its init a process of the unit.
        let runtime = format!("/var/lib/cvmd-state/{inst}/runtime");
        let state = host.sh_text(&format!("runc --root {runtime} state {inst}"));
        let state: serde_json::Value = serde_json::from_str(&state)
            .unwrap_or_else(|e| panic!("runc state {inst} inside: {e}: {state}"));
        assert_eq!(state["status"], "running", "{state}");
        let init = state["pid"].as_u64().unwrap();
        let cgroup = host.sh_text(&format!("cat /proc/{init}/cgroup"));
        assert!(
            cgroup.contains(&format!(
                "/system.slice/system-cvmd.slice/cvmd@{inst}.service/"
            )),
            "workspace init {init} is not below the unit's cgroup:\n{cgroup}"
        );
    }

    // Restart=on-failure: a workspace that dies (SIGKILL from outside)
    // makes cvmd exit non-zero, and systemd starts it again after
    // RestartSec (5 s) to READY=1; the other instance is untouched.
    let killed = host.sh(&format!(
        "runc --root /var/lib/cvmd-state/{0}/runtime kill {0} KILL",
        INSTANCES[0]
    ));
    assert_success(&killed, "runc kill of ws1's workspace");
    let t0 = Instant::now();
    let mut show = String::new();
    let restarted = crate::common::wait_until(Duration::from_secs(30), || {
        show = host.sh_text(&format!(
            "systemctl show cvmd@{} -p ActiveState,SubState,NRestarts,StatusText",
            INSTANCES[0]
        ));
        if show.lines().any(|l| l == "NRestarts=1") && show.lines().any(|l| l == "SubState=running")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    assert!(
        restarted,
        "cvmd@{} was not restarted after its workspace died:\n{show}\n{}",
        INSTANCES[0],
        host.diagnosis()
    );
    assert!(show.contains("StatusText=workspace running"), "{show}");
    eprintln!("restarted after {:?}", t0.elapsed());
    let other = host.sh_text(&format!(
        "systemctl show cvmd@{} -p NRestarts,SubState",
        INSTANCES[1]
    ));
    assert!(
        other.lines().any(|l| l == "NRestarts=0") && other.lines().any(|l| l == "SubState=running"),
        "{other}"
    );

    let t0 = Instant::now();
    let stop = host.sh(&format!("timeout 60 systemctl stop {units}"));
    assert!(
        stop.status.success(),
        "systemctl stop failed: {}\n{}",
        String::from_utf8_lossy(&stop.stderr),
        host.diagnosis()
    );
    eprintln!("systemctl stop returned after {:?}", t0.elapsed());
    for inst in INSTANCES {
        let show = host.sh_text(&format!(
            "systemctl show cvmd@{inst} -p ActiveState,Result,ExecMainStatus,ExecMainCode"
        ));
        for want in ["ActiveState=inactive", "Result=success", "ExecMainStatus=0"] {
            assert!(
                show.lines().any(|l| l == want),
                "after stop, cvmd@{inst} not {want}:\n{show}\n{}",
                host.diagnosis()
            );
        }
        // The nested runtime's container went with it.
        let left = host.sh_text(&format!(
            "runc --root /var/lib/cvmd-state/{inst}/runtime list -q"
        ));
        assert!(left.trim().is_empty(), "{inst}: runc still lists: {left}");
    }
    eprintln!("whole test took {:?}", started.elapsed());
}
