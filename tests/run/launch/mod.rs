//! The launch stage end to end, `cvmd run` under real runc (standing in
//! for sysbox-runc) with images from the local registry: fake GPU nodes and
//! driver libraries inside, ID-mapped user mounts, the bootstrap script,
//! zombies reaped by cvmd as PID 1, the termination log, and (in `sysbox`)
//! the Sysbox daemons played by scripts.
//!
//! Needs root, runc, busybox-static and docker-registry; skips with a
//! reason otherwise.

mod support;
mod sysbox;

use crate::common::prereq;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::common::layers::can_run;
use support::*;

fn mknod(path: &Path, major: u64, minor: u64, mode: u32) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .unwrap();
    // mknod applies the umask; the test wants these exact modes.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn launch_gpu_nodes_libs_and_env_inside() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let fake = tempfile::tempdir().unwrap();
    let dev = fake.path().join("dev");
    let lib = fake.path().join("lib");
    std::fs::create_dir_all(dev.join("nvidia-caps")).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    // NVIDIA's char major is 195; nvidiactl is minor 255.
    mknod(&dev.join("nvidia0"), 195, 0, 0o666);
    mknod(&dev.join("nvidiactl"), 195, 255, 0o660);
    mknod(&dev.join("nvidia-caps/nvidia-cap1"), 236, 1, 0o400);
    mknod(&dev.join("null-not-gpu"), 1, 3, 0o666);
    std::fs::write(lib.join("libcuda.so.535.104.05"), "fake cuda").unwrap();
    std::fs::set_permissions(
        lib.join("libcuda.so.535.104.05"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("libcuda.so.535.104.05", lib.join("libcuda.so.1")).unwrap();
    std::fs::write(lib.join("libnvidia-ml.so.535.104.05"), "fake nvml").unwrap();
    std::fs::write(lib.join("libfoo.so.1"), "not a driver lib").unwrap();

    // Opening a node the device cgroup allows reaches the (absent) driver:
    // ENXIO, "No such device or address"; a denied one fails with EPERM.
    let check = "stat -c 'node %n %F %t:%T %a' /dev/nvidia0 /dev/nvidiactl /dev/nvidia-caps/nvidia-cap1; \
                 cat /dev/nvidia0 2>&1 | sed 's/^/open /'; \
                 for f in /usr/lib/x86_64-linux-gnu/*; do stat -c 'lib %n %s %a' $f; done; \
                 cat /usr/lib/x86_64-linux-gnu/libcuda.so.1; echo; \
                 touch /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>/dev/null && echo lib-writable || echo lib-readonly; \
                 echo \"env NV=$NVIDIA_VISIBLE_DEVICES OTHER=$OTHER_VAR\"";
    let reference = world.push("launch/gpu", &busybox_image(&["/bin/sh", "-c", check]));
    let out = world
        .cvmd(
            &reference,
            &[
                "--add-gpu",
                "true",
                "--gpu-dev-dir",
                dev.to_str().unwrap(),
                "--usr-lib-dir",
                lib.to_str().unwrap(),
            ],
        )
        .env("NVIDIA_VISIBLE_DEVICES", "all")
        .env("OTHER_VAR", "leak")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    for want in [
        "node /dev/nvidia0 character special file c3:0 666",
        "node /dev/nvidiactl character special file c3:ff 660",
        "node /dev/nvidia-caps/nvidia-cap1 character special file ec:1 400",
        // The soname link arrives as the library it names, read-only.
        "lib /usr/lib/x86_64-linux-gnu/libcuda.so.1 9 755",
        "lib /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05 9 755",
        "lib /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.104.05 9 644",
        "fake cuda",
        "lib-readonly",
        "No such device or address",
        "env NV=all OTHER=",
    ] {
        assert!(log.contains(want), "inside lacks {want:?}:\n{log}");
    }
    assert!(
        !log.contains("libfoo"),
        "a non-driver lib was bound:\n{log}"
    );
    assert!(!log.contains("null-not-gpu"), "{log}");
    assert!(!log.contains("OTHER=leak"), "only NVIDIA_* pass:\n{log}");
    world.assert_clean();
    // The outer files are as they were.
    assert_eq!(
        std::fs::read_to_string(lib.join("libcuda.so.1")).unwrap(),
        "fake cuda"
    );
}

#[test]
fn launch_tun_and_fuse_nodes_inside_open_for_everyone() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    // Opening (not reading) proves the device cgroup allows the node: a
    // denied open fails with EPERM before any driver is reached.
    let check = "stat -c 'node %n %F %t:%T %a' /dev/net/tun /dev/fuse; \
                 (exec 3<>/dev/net/tun) && echo open-tun-ok; \
                 (exec 3<>/dev/fuse) && echo open-fuse-ok";
    let reference = world.push("launch/tunfuse", &busybox_image(&["/bin/sh", "-c", check]));
    let out = world
        .cvmd(&reference, &["--add-tun", "true", "--add-fuse", "true"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    for want in [
        // misc 10:200 and 10:229, usable by every user inside (the outer
        // nodes here are 0600: the workspace's are its own).
        "node /dev/net/tun character special file a:c8 666",
        "node /dev/fuse character special file a:e5 666",
        "open-tun-ok",
        "open-fuse-ok",
    ] {
        assert!(log.contains(want), "inside lacks {want:?}:\n{log}");
    }
    world.assert_clean();

    // Without the settings, neither node is there.
    let reference = world.push(
        "launch/notunfuse",
        &busybox_image(&["/bin/sh", "-c", "stat /dev/net/tun /dev/fuse 2>&1; true"]),
    );
    let out = world.cvmd(&reference, &[]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.matches("No such file or directory").count() >= 2,
        "{log}"
    );
    world.assert_clean();
}

#[test]
fn launch_gpu_without_nodes_is_a_clear_error() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let empty = tempfile::tempdir().unwrap();
    let reference = world.push("launch/nogpu", &busybox_image(&["/bin/true"]));
    let out = world
        .cvmd(
            &reference,
            &[
                "--add-gpu",
                "1",
                "--gpu-dev-dir",
                empty.path().to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let line = crate::common::layers::error_line(&out);
    assert!(line.contains("holds no nvidia* device nodes"), "{line}");
    world.assert_clean();
}

#[test]
fn launch_user_mounts_idmapped_owned_by_root_inside() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let host = tempfile::tempdir().unwrap();
    let rw = host.path().join("rw");
    let ro = host.path().join("ro");
    std::fs::create_dir_all(rw.join("deep")).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(rw.join("deep/owned-1000"), "x").unwrap();
    std::os::unix::fs::chown(rw.join("deep/owned-1000"), Some(1000), Some(1000)).unwrap();
    std::fs::write(ro.join("file"), "ro").unwrap();
    let check = "cat /proc/self/uid_map; \
                 stat -c 'own %n %u:%g' /mnt/rw /mnt/rw/deep /mnt/rw/deep/owned-1000 /mnt/ro/file; \
                 echo made > /mnt/rw/deep/new && echo rw-write-ok || echo rw-write-refused; \
                 echo x > /mnt/ro/new 2>/dev/null && echo ro-write-ok || echo ro-write-refused";
    let reference = world.push("launch/mounts", &busybox_image(&["/bin/sh", "-c", check]));
    let mounts = format!("{}:/mnt/rw,{}:/mnt/ro:ro", rw.display(), ro.display());
    let out = world
        .cvmd(&reference, &["--idmap", "auto", "--mounts", &mounts])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("mapped=IdMapped"),
        "ID-mapped, not chowned: {log}"
    );
    for want in [
        "own /mnt/rw 0:0",
        "own /mnt/rw/deep 0:0",
        "own /mnt/rw/deep/owned-1000 1000:1000",
        "own /mnt/ro/file 0:0",
        "rw-write-ok",
        "ro-write-refused",
    ] {
        assert!(log.contains(want), "inside lacks {want:?}:\n{log}");
    }
    // The user namespace is really there (root inside is not root outside).
    assert!(!log.contains("4294967295"), "no user namespace: {log}");
    // Written as root inside, owned by root outside: the source is untouched.
    let made = std::fs::metadata(rw.join("deep/new")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    assert_eq!(std::fs::metadata(&rw).unwrap().uid(), 0);
    assert!(!ro.join("new").exists());
    world.assert_clean();
    let staged = world
        .state
        .path()
        .join("workspaces")
        .join(world.workspace())
        .join("mounts");
    assert!(!staged.exists(), "staged mounts left at {staged:?}");
}

#[test]
fn launch_bootstrap_script_runs_as_the_workspace_user_and_failure_is_a_warning() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let reference = world.push("launch/bootstrap", &busybox_image(UNTIL_TERM));
    let script = "echo \"boot as $(id -u):$(id -g) in $PWD\"\necho to-stderr >&2\nexit 3";
    let mut run = Running::spawn(world.cvmd(
        &reference,
        &[
            "--user",
            "1000:1000",
            "--bootstrap-script",
            script,
            "--stop-timeout",
            "5",
        ],
    ));
    run.wait_for("bootstrap script failed", Duration::from_secs(60));
    run.terminate();
    let (status, log) = run.finish(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "a failed script is no workspace failure:\n{log}"
    );
    let lines = workspace_lines(&log).join("\n");
    assert!(lines.contains("boot as 1000:1000"), "{log}");
    assert!(lines.contains("to-stderr"), "{log}");
    assert!(log.contains("exit code 3"), "{log}");
    // Its output was logged before its status.
    assert!(log.find("to-stderr").unwrap() < log.find("bootstrap script failed").unwrap());
    world.assert_clean();
}

#[test]
fn launch_as_pid1_reaps_orphaned_zombies() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let reference = world.push("launch/zombies", &busybox_image(UNTIL_TERM));
    // cvmd as PID 1 of its own PID (and mount) namespace, as in a pod.
    let mut cmd = std::process::Command::new("unshare");
    // --kill-child: a test that fails half-way stops cvmd through unshare.
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child=SIGTERM",
        "--",
    ]);
    let inner = world.cvmd(&reference, &[]);
    cmd.arg(inner.get_program());
    cmd.args(inner.get_args());
    cmd.env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let mut run = Running::spawn(cmd);
    run.wait_for("workspace up", Duration::from_secs(60));
    let unshare = run.child.id().cast_signed();
    let cvmd = children(unshare)
        .into_iter()
        .next()
        .expect("cvmd under unshare");
    for _ in 0..3 {
        // sh exits at once; its background sleep is orphaned inside cvmd's
        // PID namespace and so becomes cvmd's child.
        let st = std::process::Command::new("nsenter")
            .args(["-t", &cvmd.to_string(), "-p", "-m", "--", "/bin/sh", "-c"])
            .arg("sleep 0.3 & exit 0")
            .status()
            .unwrap();
        assert!(st.success());
    }
    let orphans = children(cvmd)
        .into_iter()
        .filter(|p| comm(*p).as_deref() == Some("sleep"))
        .count();
    assert!(
        orphans >= 1,
        "the orphans were not reparented to cvmd:\n{}",
        run.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let zombies: Vec<i32> = children(cvmd)
        .into_iter()
        .filter(|p| state(*p) == Some('Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies under cvmd: {zombies:?}");
    run.terminate_pid(cvmd);
    let (status, log) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    world.assert_clean();
}

impl Running {
    fn terminate_pid(&self, pid: i32) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
}

/// The pids whose parent is `pid` (host view).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| stat_field(*p, 1).and_then(|s| s.parse().ok()) == Some(pid))
        .collect()
}

fn state(pid: i32) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

fn comm(pid: i32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

/// Field `n` after the parenthesised name of /proc/PID/stat (0: state, 1: ppid).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

#[test]
fn launch_fatal_error_goes_to_the_termination_log() {
    require!(can_run());
    require!(prereq::runc());
    let world = World::new();
    let reference = world.push("launch/termlog", &busybox_image(&["/bin/true"]));
    let termlog = world.state.path().join("termination-log");
    std::fs::write(&termlog, "").unwrap();
    let out = world
        .cvmd(
            &reference,
            &[
                "--termination-log",
                termlog.to_str().unwrap(),
                "--runtime",
                "/nonexistent/runc",
            ],
        )
        .output()
        .unwrap();
    let line = crate::common::layers::error_line(&out);
    let written = std::fs::read_to_string(&termlog).unwrap();
    assert!(written.contains("/nonexistent/runc"), "{written}");
    assert_eq!(
        written.trim(),
        line.trim_start_matches("cvmd: error: ").trim()
    );
    world.assert_clean();
}
