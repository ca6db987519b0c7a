//! cvmd under systemd's Type=notify, with a fake service manager: the test
//! binds the unix datagram socket that NOTIFY_SOCKET names, as systemd
//! does, and reads what a real `cvmd run` of a busybox workspace under
//! runc sends: STATUS= per phase, READY=1 once it runs, STOPPING=1 when it
//! is stopped. (tests/repo/ship_files.rs checks the units themselves.)
//!
//! Needs root, runc and docker-registry; skips with a reason otherwise.

#[allow(dead_code)] // the exec and permission helpers are control_api.rs's
use crate::common::prereq;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::api::*;
use crate::common::layers::*;
use crate::common::Registry;

/// Every datagram until `until` matches one, or the deadline.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, until: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == until);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn cvmd_tells_systemd_its_phases_readiness_and_stop() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "notify/ws", "v1", &chatty_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let state = tempfile::Builder::new()
        .prefix("cvmd-api-")
        .tempdir()
        .unwrap();
    let notify_path = state.path().join("notify");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = cvmd
        .workspace(state.path(), &reference, &["--stop-timeout", "5"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let ready = read_until(&manager, &mut seen, "READY=1");
    let nix_pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
    let _ = nix::sys::signal::kill(nix_pid, nix::sys::signal::Signal::SIGTERM);
    let stopping = ready && read_until(&manager, &mut seen, "STOPPING=1");
    let exited = stopping && read_until(&manager, &mut seen, "STATUS=workspace exited");
    let out = stop(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(ready, "no READY=1: {seen:?}\n{stderr}");
    assert!(stopping, "no STOPPING=1 after SIGTERM: {seen:?}\n{stderr}");
    assert!(exited, "no final STATUS: {seen:?}\n{stderr}");
    let lines: Vec<&str> = seen.iter().flat_map(|m| m.lines()).collect();
    let at = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    // Every boot phase had its STATUS, in order, READY=1 only after them.
    let phases = ["pull", "rootfs", "bundle", "create", "start"];
    let mut last = 0;
    for p in phases {
        let i = at(&format!("STATUS=phase: {p}"));
        assert!(i >= last, "{p} out of order: {lines:?}");
        last = i;
    }
    assert!(at("READY=1") > last, "ready only when running: {lines:?}");
    assert!(at("STATUS=workspace running") < at("STOPPING=1"));
    assert_eq!(
        lines.iter().filter(|l| **l == "READY=1").count(),
        1,
        "{lines:?}"
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_clean(state.path());
}
