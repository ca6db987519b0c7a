//! `cvmd run` end to end under real runc (standing in for sysbox-runc): an
//! image without init runs its entrypoint and its exit code becomes cvmd's;
//! SIGTERM stops a workspace within the grace period; nothing is left
//! mounted or registered with the runtime afterwards.
//!
//! Needs root, runc and docker-registry; skips with a reason otherwise.

use crate::common::busybox::{self, busybox_layer};
use crate::common::prereq;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::image::{Compression, Format, ImageBuilder};
use crate::common::layers::*;
use crate::common::Registry;

/// busybox-static as the image's only content, with `entrypoint`.
fn busybox_image(entrypoint: &[&str]) -> crate::common::image::Image {
    busybox::busybox_image(
        &["sh", "sleep", "echo", "cat", "ls", "head", "tr"],
        entrypoint,
    )
}

fn cvmd_run(cvmd: &CvmdOnCache, state: &Path, reference: &str, extra: &[&str]) -> Command {
    cvmd.workspace(state, reference, extra)
}

#[test]
fn run_entrypoint_exit_code_becomes_cvmds() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "run/exit",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "echo hello from the workspace; exit 7"]),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd_run(&cvmd, state.path(), &reference, &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("hello from the workspace"),
        "the workspace's output is logged: {stderr}"
    );
    assert_state_clean(state.path());
    sandbox.assert_outside_untouched();
}

#[test]
fn run_command_override_and_no_init() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "run/override",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "exit 1"]),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd_run(
        &cvmd,
        state.path(),
        &reference,
        &[
            "--command",
            r#"["/bin/sh","-c","echo overridden in $(cat /etc/hostname); exit 0"]"#,
            "--hostname",
            "devbox",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("overridden in devbox"), "{stderr}");
    assert!(
        stderr.contains("init=false"),
        "no /sbin/init in busybox: {stderr}"
    );
    assert_state_clean(state.path());
}

#[test]
fn run_sigterm_stops_the_workspace_within_the_grace_period() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    // sleep as PID 1 ignores SIGTERM: the grace period must end it.
    let reference = push(
        &reg,
        "run/stop",
        "v1",
        &busybox_image(&["/bin/sleep", "1000"]),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let child = cvmd_run(&cvmd, state.path(), &reference, &["--stop-timeout", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid_file = state
        .path()
        .join("workspaces")
        .join(workspace_name(state.path()))
        .join("init.pid");
    assert!(
        crate::common::wait_until(Duration::from_secs(30), || pid_file.exists()),
        "the workspace never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(137),
        "SIGKILL after the grace period: {stderr}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}: {stderr}"
    );
    assert_state_clean(state.path());
}

#[test]
fn run_with_a_failing_runtime_says_why_and_cleans_up() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "run/badruntime", "v1", &busybox_image(&["/bin/sh"]));
    let script = state.path().join("broken-runc");
    std::fs::write(
        &script,
        "#!/bin/sh\nlog=\nwhile [ $# -gt 0 ]; do [ \"$1\" = --log ] && log=$2; shift; done\n\
         [ -n \"$log\" ] && echo '{\"level\":\"error\",\"msg\":\"broken runtime: cgroup v9 not supported\"}' > \"$log\"\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd_run(
        &cvmd,
        state.path(),
        &reference,
        &["--runtime", script.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains("broken runtime: cgroup v9 not supported"),
        "the runtime's own message: {line}"
    );
    assert_state_clean(state.path());
}

#[test]
fn run_sigterm_during_the_pull_stops_at_once() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    let img = ImageBuilder::new(Format::Oci)
        .layer(crate::common::image::Layer::random(
            "big.bin",
            8,
            3,
            Compression::Gzip,
        ))
        .entrypoint(&["/bin/sh"])
        .build();
    push(&reg, "run/slow", "v1", &img);
    // 8 MiB at 256 KiB/s: the pull takes half a minute unless stopped.
    proxy.throttle_blobs(256 << 10);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());
    let reference = format!("{}/run/slow:v1", proxy.host());
    let child = cvmd_run(&cvmd, state.path(), &reference, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ingest = sandbox.cache().join("ingest");
    let downloading = || {
        std::fs::read_dir(&ingest)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            })
            .unwrap_or(false)
    };
    assert!(
        crate::common::wait_until(Duration::from_secs(20), downloading),
        "the pull never started"
    );
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "128+SIGTERM: {stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    assert!(
        stderr.contains("stop requested before the workspace booted"),
        "{stderr}"
    );
    assert_state_clean(state.path());
}

/// A budget smaller than the image: the gc that keeps the cache within it
/// runs only once the image's layers are leased, so the start never loses
/// its own image (it used to run right after the pull and evict it).
#[test]
fn run_cache_budget_never_evicts_the_image_being_started() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let base = busybox_layer(&["sh", "wc", "cat"]);
    let image = ImageBuilder::new(Format::Oci)
        .layer(base.build(Compression::Gzip))
        .layer(crate::common::image::Layer::random(
            "data/blob",
            1,
            5,
            Compression::Gzip,
        ))
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "test \"$(cat /data/blob | wc -c)\" -eq 1048576",
        ])
        .build();
    let reference = push(&reg, "run/budget", "v1", &image);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    for round in ["cold", "warm"] {
        let out = cvmd_run(&cvmd, state.path(), &reference, &["--cache-budget", "1KiB"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{round} start: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_state_clean(state.path());
    }
}
/// A `kB` field of cvmd's /proc/PID/status, which must be there.
fn status_kib(pid: u32, field: &str) -> u64 {
    crate::common::proc_status_kib(pid, field)
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Starts `cvmd run` in the background, its log to `state`/cvmd.log.
fn spawn_logged(
    cvmd: &CvmdOnCache,
    state: &Path,
    reference: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let log = state.join("cvmd.log");
    let child = cvmd_run(cvmd, state, reference, &["--stop-timeout", "1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

/// cvmd lives as long as its workspace: the buffers its pull freed go back
/// to the kernel once the workspace runs, rather than stay resident in
/// every workspace's pod for its whole life.
#[test]
fn run_gives_the_pulls_memory_back_once_the_workspace_runs() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let mut image = ImageBuilder::new(Format::Oci)
        .layer(busybox_layer(&["sh", "sleep"]).build(Compression::Gzip));
    for seed in 1..=8 {
        image = image.layer(crate::common::image::Layer::random(
            &format!("data/blob{seed}"),
            16,
            seed,
            Compression::Gzip,
        ));
    }
    let reference = push(
        &reg,
        "run/memory",
        "v1",
        &image.entrypoint(&["/bin/sleep", "1000"]).build(),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let (child, log) = spawn_logged(&cvmd, state.path(), &reference);
    let running = crate::common::wait_until(Duration::from_secs(120), || {
        tail_contains(&log, "workspace running")
    });
    // The give-back follows the log line.
    std::thread::sleep(Duration::from_millis(300));
    let peak = status_kib(child.id(), "VmHWM");
    let anon = status_kib(child.id(), "RssAnon");
    crate::common::api::stop(child);
    eprintln!("cvmd while its workspace runs: {anon} KiB anonymous, peak RSS {peak} KiB");
    assert!(
        running,
        "the workspace never ran:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // 4.5 MiB here with the give-back, 11-25 MiB without it (8 layers
    // pulled at once).
    assert!(
        anon < 8 << 10,
        "cvmd kept {} MiB of anonymous memory while its workspace ran (peak RSS {} MiB)",
        anon >> 10,
        peak >> 10
    );
    assert_state_clean(state.path());
}

/// Whether the last 64 KiB of `path` hold `needle` (the file is large).
fn tail_contains(path: &Path, needle: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)))
        .unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    String::from_utf8_lossy(&tail).contains(needle)
}

#[test]
fn run_a_workspace_writing_one_endless_line_keeps_cvmd_small() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    // 128 MiB without a newline, then a marker line, then idle.
    let reference = push(
        &reg,
        "run/flood",
        "v1",
        &busybox_image(&[
            "/bin/sh",
            "-c",
            "head -c 134217728 /dev/zero | tr '\\0' x; echo; echo flood-done-$((6*7)); exec sleep 1000",
        ]),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let (child, log) = spawn_logged(&cvmd, state.path(), &reference);
    let done = crate::common::wait_until(Duration::from_secs(120), || {
        tail_contains(&log, "flood-done-42")
    });
    let peak = status_kib(child.id(), "VmHWM");
    crate::common::api::stop(child);
    eprintln!("cvmd peak RSS during the flood: {peak} KiB");
    assert!(done, "the workspace's marker line never reached cvmd's log");
    assert!(
        peak < 64 << 10,
        "cvmd's peak RSS was {} MiB while the workspace wrote one 128 MiB line",
        peak >> 10
    );
    // The line was cut into partial records, not dropped.
    assert!(
        tail_contains(&log, "partial=true"),
        "no partial records logged"
    );
    assert_state_clean(state.path());
}

/// The workspace's root is an unprivileged host ID in its user namespace:
/// a state dir below a directory it may not search gets one line naming
/// that directory and the fix, instead of runc's bare "permission denied"
/// on the rootfs mount.
#[test]
fn run_a_state_dir_the_workspace_root_cannot_reach_is_named() {
    require!(can_run());
    require!(prereq::runc());
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let outer = tempfile::tempdir().unwrap();
    let closed = outer.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = closed.join("state");
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "run/unreachable",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "exit 0"]),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let out = cvmd_run(&cvmd, &state, &reference, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("cvmd: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        line.contains(&format!("chmod o+x {}", closed.display())),
        "{line}"
    );
    assert_state_clean(&state);
}
