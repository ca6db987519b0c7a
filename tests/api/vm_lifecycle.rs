//! The workspace behaves like a machine under real runc: an init other
//! than systemd stops on its own request; `reboot` inside boots the
//! workspace again in place; `poweroff` ends cvmd with 0; the memory
//! cgroup's OOM kills are counted and named.
//!
//! Needs root, runc, busybox-static and docker-registry; skips with a
//! reason otherwise (panics under CI=true).

#[allow(dead_code)]
use crate::common::busybox::{busybox_image, busybox_layer};
use crate::common::prereq::{self, Need};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::api::{start_cvmd, text};
use crate::common::image::{Compression, Format, ImageBuilder};
use crate::common::layers::*;
use crate::common::Registry;

const INITTAB: &str = "\
::sysinit:/bin/echo busybox init booted
::respawn:/bin/sleep 3600
::shutdown:/bin/echo busybox init shutting down
";

/// busybox-static with `/sbin/init` a link to it, and an inittab that keeps
/// one service alive and says when it shuts down.
fn busybox_init_image() -> crate::common::image::Image {
    let layer = busybox_layer(&[
        "sh", "sleep", "echo", "cat", "reboot", "poweroff", "halt", "head", "dd",
    ])
    .dir("sbin", 0o755)
    .dir("etc", 0o755)
    .dir("tmp", 0o1777)
    .file("etc/inittab", INITTAB.as_bytes(), 0o644)
    .symlink("sbin/init", "/bin/busybox");
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .build()
}

fn prerequisites() -> Need {
    can_run()?;
    prereq::runc().map(drop)
}

#[test]
fn busybox_init_stops_cleanly_on_sigterm_within_seconds() {
    require!(prerequisites());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/busybox-init", "v1", &busybox_init_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    // start_cvmd's stop timeout is 5 s: ending before it, with 0, is the
    // init's own shutdown, not SIGKILL after the grace period.
    let running = start_cvmd(&cvmd, &reference, &[]);
    running.wait_for("running", |s| s["phase"] == "running");
    // Let busybox init install its handlers before asking it to stop.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let (code, stderr) = running.finish();
    let took = sent.elapsed();
    assert_eq!(code, Some(0), "a clean poweroff: {stderr}");
    assert!(
        took < Duration::from_millis(4500),
        "stopped in {took:?}, not by the grace period: {stderr}"
    );
    assert!(
        stderr.contains("init_flavor=\"busybox\"") || stderr.contains("init_flavor=busybox"),
        "busybox init detected: {stderr}"
    );
    assert!(
        stderr.contains("busybox init shutting down"),
        "its shutdown actions ran: {stderr}"
    );
}

#[test]
fn reboot_inside_boots_again_in_place_and_poweroff_ends_with_0() {
    require!(prerequisites());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/busybox-reboot", "v1", &busybox_init_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &[]);
    let first = ws.wait_for("running", |s| s["phase"] == "running");
    assert_eq!(first["boots"], 1, "{first}");
    let first_pid = first["init_pid"].clone();
    let events = ws
        .ctl(&["events", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A marker on the rootfs: the next boot must see it (same rootfs).
    let out = ws.run(&["exec", "--", "/bin/sh", "-c", "echo kept > /etc/marker"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // reboot(2) itself: the kernel ends the PID namespace's init as if by
    // SIGHUP. The exec dies with its container; its status says nothing.
    let _ = ws.run(&["exec", "--", "/bin/reboot", "-f"]);
    let again = ws.wait_for("booted again", |s| {
        s["phase"] == "running" && s["boots"] == 2 && s["reboots"] == 1
    });
    assert_ne!(again["init_pid"], first_pid, "a new container: {again}");
    let out = ws.run(&["exec", "--", "/bin/cat", "/etc/marker"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "the same rootfs: {}",
        text(&out)
    );
    // Let the new busybox init install its handlers, then power off.
    std::thread::sleep(Duration::from_millis(500));
    let _ = ws.run(&["exec", "--", "/bin/poweroff", "-f"]);
    let (code, stderr, on_its_own) = ws.wait_exit(Duration::from_secs(20));
    assert!(on_its_own, "poweroff ends cvmd: {stderr}");
    assert_eq!(code, Some(0), "poweroff is a clean end: {stderr}");
    let events = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned();
    let reboot_events: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "reboot")
        .collect();
    assert_eq!(reboot_events.len(), 1, "one reboot event: {events}");
    assert!(
        stderr.contains("the workspace rebooted itself"),
        "the log says so: {stderr}"
    );
}

#[test]
fn a_reboot_loop_is_bounded() {
    require!(prerequisites());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/busybox-loop", "v1", &busybox_init_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    // Every boot reboots at once: the second reboot passes the bound.
    let ws = start_cvmd(
        &cvmd,
        &reference,
        &[
            "--max-reboots",
            "1",
            "--reboot-window",
            "600",
            "--bootstrap-script",
            "sleep 0.5; reboot -f",
        ],
    );
    let (code, stderr, on_its_own) = ws.wait_exit(Duration::from_secs(60));
    assert!(on_its_own, "the loop ends cvmd: {stderr}");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the workspace rebooted 2 times within 600s (CVMD_MAX_REBOOTS=1"),
        "one clear line: {stderr}"
    );
}

/// Allocates (and touches) 64 MiB: past a 32 MiB limit, with no swap.
const HOG: &[&str] = &[
    "/bin/dd",
    "if=/dev/zero",
    "of=/dev/null",
    "bs=64M",
    "count=1",
];

#[test]
fn oom_kills_inside_are_counted_and_reported() {
    require!(prerequisites());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "vm/busybox-oom", "v1", &busybox_init_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &["--memory", "32M"]);
    let first = ws.wait_for("running", |s| s["phase"] == "running");
    assert_eq!(first["oom_kills"], 0, "{first}");
    let events = ws
        .ctl(&["events", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut args = vec!["exec", "--"];
    args.extend_from_slice(HOG);
    let out = ws.run(&args);
    assert_ne!(out.status.code(), Some(0), "dd was killed: {}", text(&out));
    let s = ws.wait_for("an OOM kill counted", |s| s["oom_kills"] == 1);
    let metrics = ws.ctl(&["metrics"]).output().unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.lines().any(|l| l == "cvmd_oom_kills_total 1"),
        "the metric follows Status:\n{text}"
    );
    assert_eq!(s["phase"], "running", "the init lives on: {s}");
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the kernel's OOM killer killed 1 process(es) in the workspace"),
        "a log line: {stderr}"
    );
    let events = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        events
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|e| e["kind"] == "oom"),
        "an oom event: {events}"
    );
}

#[test]
fn an_init_killed_by_oom_ends_cvmd_saying_so() {
    require!(prerequisites());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let image = busybox_image(&["dd"], HOG);
    let reference = push(&reg, "vm/init-oom", "v1", &image);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let state = tempfile::tempdir().unwrap();
    let termination_log = state.path().join("termination-log");
    std::fs::write(&termination_log, "").unwrap();
    let out = cvmd
        .workspace(
            state.path(),
            &reference,
            &[
                "--memory",
                "32M",
                "--termination-log",
                termination_log.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "128 + SIGKILL: {stderr}");
    assert!(
        stderr.contains("the workspace's init was killed by the kernel's OOM killer"),
        "cvmd says why: {stderr}"
    );
    let message = std::fs::read_to_string(&termination_log).unwrap();
    assert!(
        message.contains("OOM killer") && message.contains("32 MiB"),
        "the termination message says so: {message:?}"
    );
}

#[test]
fn systemd_reboots_in_place_and_powers_off_with_0() {
    require!(prerequisites());
    require!(crate::common::debootstrap::available());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = crate::common::debootstrap::build_and_push(
        "systemd",
        &format!("{}/examples", reg.host()),
        None,
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &[]);
    let first = ws.wait_for("running", |s| s["phase"] == "running");
    let is_running = |ws: &crate::common::api::Running| {
        let out = ws.run(&["exec", "--", "systemctl", "is-system-running"]);
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        said == "running" || said == "degraded"
    };
    assert!(
        crate::common::wait_until(Duration::from_secs(60), || is_running(&ws)),
        "systemd never reached running"
    );
    // systemd's own reboot: reboot.target, then reboot(2) from
    // systemd-shutdown, which ends PID 1 as if by SIGHUP.
    let _ = ws.run(&["exec", "--", "systemctl", "reboot"]);
    let again = ws.wait_for("booted again", |s| {
        s["phase"] == "running" && s["reboots"] == 1 && s["boots"] == 2
    });
    assert_ne!(again["init_pid"], first["init_pid"], "{again}");
    assert!(
        crate::common::wait_until(Duration::from_secs(60), || is_running(&ws)),
        "systemd never came back after the reboot"
    );
    let _ = ws.run(&["exec", "--", "systemctl", "poweroff"]);
    let (code, stderr, on_its_own) = ws.wait_exit(Duration::from_secs(30));
    assert!(on_its_own, "poweroff ends cvmd: {stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("init_flavor=\"systemd\"") || stderr.contains("init_flavor=systemd"),
        "{stderr}"
    );
}
