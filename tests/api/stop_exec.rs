//! Ending things cleanly against a real `cvmd run` under real runc, driven
//! by the real `cvmctl`: an exec whose client disconnects is hung up and
//! then killed, and a restart that races the workspace's own exit does not
//! stop the container it boots.
//!
//! Needs root, runc, busybox-static and docker-registry; skips with a
//! reason otherwise, and fails instead under CI=true.

#[allow(dead_code)]
use crate::common::busybox::busybox_layer;
use crate::common::prereq::{self, Need};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::api::*;
use crate::common::image::{Compression, Format, ImageBuilder};
use crate::common::layers::*;
use crate::common::Registry;

fn prerequisites() -> Need {
    can_run()?;
    prereq::runc().map(drop)
}

fn image(script: &str) -> crate::common::image::Image {
    let layer = busybox_layer(&["sh", "sleep", "echo", "touch", "cat"]);
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .entrypoint(&["/bin/sh", "-c", script])
        .build()
}

/// Host pids of processes whose command line is exactly `cmdline` (the
/// workspace's processes are visible from the host's PID namespace).
fn pids_of(cmdline: &str) -> Vec<i32> {
    let want: Vec<u8> = cmdline.replace(' ', "\0").into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.strip_suffix(b"\0").unwrap_or(&c) == want.as_slice())
        })
        .collect()
}

/// `cvmctl exec -- ARGS` left running until the test interrupts it.
fn exec_then_ctrl_c(ws: &Running, args: &[&str], marker: &str) -> Instant {
    let mut all = vec!["exec", "--"];
    all.extend_from_slice(args);
    let mut client = ws
        .ctl(&all)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        crate::common::wait_until(Duration::from_secs(20), || !pids_of(marker).is_empty()),
        "the exec never started"
    );
    // Ctrl-C: cvmctl dies of SIGINT and its connection closes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client.id().cast_signed()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    client.wait().unwrap();
    Instant::now()
}

#[test]
fn exec_whose_client_disconnects_is_hung_up_then_killed_needs_root() {
    require!(prerequisites());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "stop/exec",
        "v1",
        &image("trap 'exit 0' TERM; while :; do sleep 1; done"),
    );
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &[]);
    ws.wait_for("running", |s| s["phase"] == "running");

    // `sleep` dies of SIGHUP: gone at once.
    let gone = exec_then_ctrl_c(&ws, &["sleep", "1000001"], "sleep 1000001");
    assert!(
        crate::common::wait_until(Duration::from_secs(3), || pids_of("sleep 1000001")
            .is_empty()),
        "the exec outlived its client by 3 s"
    );
    let hup_took = gone.elapsed();

    // One that ignores SIGHUP (the disposition survives exec) lives through
    // the grace, then SIGKILL ends it.
    let gone = exec_then_ctrl_c(
        &ws,
        &["sh", "-c", "trap '' HUP; exec sleep 1000002"],
        "sleep 1000002",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !pids_of("sleep 1000002").is_empty(),
        "ended before the grace although it ignores SIGHUP"
    );
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || pids_of("sleep 1000002")
            .is_empty()),
        "SIGKILL never came"
    );
    let kill_took = gone.elapsed();

    let (code, log) = ws.finish();
    assert_eq!(code, Some(0), "{log}");
    assert!(hup_took < Duration::from_secs(3), "{hup_took:?}");
    assert!(
        kill_took >= Duration::from_secs(4) && kill_took < Duration::from_secs(9),
        "SIGKILL after the 5 s grace: {kill_took:?}"
    );
    // Both session tasks ended, and said how.
    assert!(log.contains("how=EndedOnHup"), "{log}");
    assert!(log.contains("how=Killed"), "{log}");
    assert_eq!(
        log.matches("exec session ended after its client left")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn restart_racing_the_workspaces_own_exit_keeps_the_new_container_needs_root() {
    require!(prerequisites());
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    let sandbox = Sandbox::new();
    let shared = tempfile::tempdir().unwrap();
    // runc, with every delete slowed down: the window between the
    // workspace's exit and cvmd noticing the container gone (phase still
    // running) becomes wide enough to ask for a restart in.
    let wrapper = shared.path().join("slow-delete-runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = delete ] && sleep 2; done\nexec {runc} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = shared.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // The first boot ends on its own; the next one runs until stopped.
    let script = "if [ ! -f /shared/booted ]; then touch /shared/booted; sleep 1; touch /shared/exiting; exit 0; fi; \
                  echo second-boot; trap 'exit 0' TERM; while :; do sleep 1; done";
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "stop/restart", "v1", &image(script));
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let mounts = format!("{}:/shared", state.display());
    let ws = start_cvmd(
        &cvmd,
        &reference,
        &["--runtime", wrapper.to_str().unwrap(), "--mounts", &mounts],
    );
    assert!(
        crate::common::wait_until(Duration::from_secs(60), || state.join("exiting").exists()),
        "the first boot never got to its end"
    );
    // Its init has exited (or is about to); cvmd is in the slow delete.
    std::thread::sleep(Duration::from_millis(300));
    let out = ws.run(&["restart"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the restart must land in the race window: {}",
        text(&out)
    );
    ws.wait_for("the second boot running", |s| {
        s["phase"] == "running" && s["boots"] == 2
    });
    // A stale stop request would end it within a moment.
    std::thread::sleep(Duration::from_secs(4));
    let s = ws.status();
    assert_eq!(s["phase"], "running", "the new container was stopped: {s}");
    assert_eq!(s["boots"], 2, "{s}");
    let (code, log) = ws.finish();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("second-boot"), "{log}");
    assert!(
        log.contains("dropped a restart request that raced the workspace's own exit"),
        "{log}"
    );
}
