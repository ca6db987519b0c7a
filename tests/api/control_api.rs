//! The control API end to end: a real `cvmd run` of a busybox workspace
//! pulled from the harness registry under real runc, driven by the real
//! `cvmctl` over the real unix socket: status through the phases (and
//! `--ready`), pull progress, events, logs with tail and follow, exec,
//! restart, stop; a non-root peer refused; garbage on the socket harmless.
//!
//! Needs root, runc and docker-registry; skips with a reason otherwise.

use crate::common::prereq;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::api::*;
use crate::common::layers::*;
use crate::common::Registry;

#[test]
fn control_api_through_a_workspaces_life() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    push(&reg, "api/life", "v1", &chatty_image());
    // Slow enough that the pull phase can be watched.
    proxy.throttle_blobs(512 << 10);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());
    let reference = format!("{}/api/life:v1", proxy.host());
    let ws = start_cvmd(&cvmd, &reference, &[]);

    // Before running: not ready, and the pull's progress can be followed.
    let early = ws.status();
    if early["phase"] != "running" {
        let ready = ws.run(&["status", "--ready"]);
        assert_eq!(ready.status.code(), Some(4), "{}", text(&ready));
    }
    let events = ws
        .ctl(&["events", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pull = ws.run(&["pull"]);
    assert_eq!(pull.status.code(), Some(0), "{}", text(&pull));
    let pull_err = String::from_utf8_lossy(&pull.stderr);
    assert!(
        pull_err.contains("done") || pull_err.contains("already in the store"),
        "a line per finished layer: {pull_err}"
    );

    let s = ws.wait_for("running", |s| s["phase"] == "running");
    assert!(s["init_pid"].as_i64().unwrap() > 1, "{s}");
    assert_eq!(s["runtime"], "runc");
    assert_eq!(s["image"]["reference"], reference);
    assert_eq!(s["image"]["source"], "registry, into cvmd's cache", "{s}");
    assert!(s["image"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(
        ["overlay", "flat"].contains(&s["rootfs_mode"].as_str().unwrap()),
        "{s}"
    );
    // The default: the workspace's own ID range, ID-mapped on this kernel.
    assert_eq!(s["idmap_mode"], "idmapped-mount", "{s}");
    let names: Vec<&str> = s["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "preflight",
            "pull",
            "rootfs",
            "bundle",
            "create",
            "network",
            "start",
            "running"
        ]
    );
    let pull_ms = s["timeline"][1]["duration_ms"].as_u64().unwrap();
    assert!(pull_ms >= 500, "the throttled pull took {pull_ms} ms");
    let ready = ws.run(&["status", "--ready"]);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready));
    let human = ws.ctl(&["status"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("\"phase\":\"running\""),
        "not a terminal: JSON"
    );

    // Logs: the tail, then followed lines after it.
    std::thread::sleep(Duration::from_millis(800));
    let tail = ws.run(&["logs", "--tail", "3", "--source", "workspace"]);
    assert_eq!(tail.status.code(), Some(0), "{}", text(&tail));
    let lines: Vec<u64> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| line_number(l).unwrap_or_else(|| panic!("not a workspace line: {l:?}")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
    let mut follow = ws
        .ctl(&["logs", "-f", "--tail", "1", "--source", "workspace"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let mut l = String::new();
        assert!(reader.read_line(&mut l).unwrap() > 0, "follow ended early");
        seen.push(line_number(&l).unwrap());
    }
    assert!(
        seen[3] > lines[2],
        "new lines arrive: {seen:?} after {lines:?}"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
    let own = ws.run(&["logs", "--tail", "500", "--source", "cvmd"]);
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("workspace running"),
        "cvmd's own log: {}",
        text(&own)
    );

    // Exec: output, stderr, exit code, stdin.
    let out = ws.run(&[
        "exec",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let mut cat = ws
        .ctl(&["exec", "-i", "--", "/bin/cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");

    let out = ws.run(&[
        "exec",
        "-e",
        "GREETING=hi",
        "-w",
        "/bin",
        "--",
        "/bin/sh",
        "-c",
        "echo $GREETING $PWD",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi /bin\n");

    // With a terminal: the command sees a tty of our window's size.
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = ws
        .ctl(&[
            "exec",
            "-t",
            "--",
            "/bin/sh",
            "-c",
            "stty size; tty; exit 4",
        ])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let status = child.wait().unwrap();
    let mut seen = Vec::new();
    let mut master = std::fs::File::from(pty.master);
    // EIO once the slave side is closed ends the read.
    let _ = master.read_to_end(&mut seen);
    let seen = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(4), "{seen}");
    assert!(seen.contains("33 101"), "the window size: {seen}");
    assert!(seen.contains("/dev/pts/"), "a terminal inside: {seen}");

    // Restart: a new init, running again.
    let old_pid = s["init_pid"].as_i64().unwrap();
    let out = ws.run(&["restart"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = ws.wait_for("running again", |s| {
        s["phase"] == "running" && s["boots"] == 2
    });
    assert_ne!(s["init_pid"].as_i64().unwrap(), old_pid, "{s}");
    assert_eq!(s["exit_status"], 3, "the first boot's status: {s}");

    // Stop: cvmd exits with the workspace's code, nothing left.
    let out = ws.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events_out = events.wait_with_output().unwrap();
    let phases: Vec<String> = String::from_utf8_lossy(&events_out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "phase")
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect();
    let tail_of: Vec<&str> = phases.iter().map(String::as_str).rev().take(7).collect();
    assert_eq!(
        tail_of,
        ["exited", "stopping", "running", "start", "network", "create", "stopping"],
        "events end with the restart and the stop (newest first): {phases:?}"
    );
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(3), "the workspace's trap code: {stderr}");
    assert!(
        stderr.contains("stop requested through the control API"),
        "{stderr}"
    );
}

#[test]
fn control_api_refuses_other_peers_and_survives_garbage() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "api/guard", "v1", &chatty_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &["--admin-group", "65534"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    let mode = std::fs::metadata(&ws.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the admin group makes the socket 0660");

    // A second cvmd on the same socket refuses to start.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(crate::common::cvmd_bin())
        .env_clear()
        .arg("--state-dir")
        .arg(other.path())
        .arg("--socket")
        .arg(&ws.socket)
        .args(["--image", &reference, "--runtime", "runc", "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another cvmd already serves"),
        "{}",
        text(&out)
    );
    // No socket: exit 3 and a line saying so.
    let out = Command::new(crate::common::cvmctl_bin())
        .arg("--socket")
        .arg(other.path().join("none.sock"))
        .args(["status", "--ready"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cvmd socket at"));

    let events = ws
        .ctl(&["events", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Members of the admin group get in, by primary or supplementary gid.
    for (gid, groups) in [(65534, vec![]), (65533, vec![65534])] {
        let mut c = ws.ctl(&["status", "--ready"]);
        as_nobody(&mut c, gid, &groups);
        let out = c.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "gid {gid} {groups:?}: {}",
            text(&out)
        );
    }
    // Others: the socket's mode stops them...
    let mut c = ws.ctl(&["status"]);
    as_nobody(&mut c, 65533, &[]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        text(&out)
    );
    // ...and when the mode is loosened, the peer check still does.
    std::fs::set_permissions(&ws.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut c = ws.ctl(&["stop"]);
    as_nobody(&mut c, 65533, &[]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    assert_eq!(
        ws.status()["phase"],
        "running",
        "the refused stop did nothing"
    );

    // Garbage, a half-open connection and an idle one do not harm cvmd.
    let mut garbage = std::os::unix::net::UnixStream::connect(&ws.socket).unwrap();
    // cvmd may hang up before all of it is written.
    let _ = garbage.write_all(&crate::common::image::pseudo_random(64 << 10, 7));
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    let mut half = std::os::unix::net::UnixStream::connect(&ws.socket).unwrap();
    let _ = half.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04");
    let _ = half.shutdown(std::net::Shutdown::Write);
    let _idle = std::os::unix::net::UnixStream::connect(&ws.socket).unwrap();
    let s = ws.status();
    assert_eq!(s["phase"], "running", "{s}");

    // Malformed and oversized requests: InvalidArgument, cvmd unharmed.
    crate::common::block_on(async {
        use cvmd::api::pb;
        let mut client = cvmd::api::client::connect(&ws.socket).await.unwrap();
        let e = client
            .logs(pb::LogsRequest {
                source: "../etc/shadow".into(),
                tail: 1,
                follow: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let e = client
            .logs(pb::LogsRequest {
                source: "x".repeat(1 << 20),
                tail: 1,
                follow: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "oversized: {e}");
        let not_start = pb::ExecRequest {
            msg: Some(pb::exec_request::Msg::Stdin(b"x".to_vec())),
        };
        let e = client
            .exec(tokio_stream::iter(vec![not_start]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });
    let big = "x".repeat(100 << 10);
    let out = ws.run(&["exec", "--", &big, &big, &big]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid request"),
        "{}",
        text(&out)
    );
    assert_eq!(ws.status()["phase"], "running");
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(3), "{stderr}");
    let warnings: Vec<serde_json::Value> =
        String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &serde_json::Value| e["kind"] == "warning")
            .collect();
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .contains("control API call refused")),
        "the refused call is a warning event: {warnings:?}"
    );
}

#[test]
fn status_warns_when_the_workspace_runs_in_the_hosts_user_namespace() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "api/unsafe", "v1", &chatty_image());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let ws = start_cvmd(&cvmd, &reference, &["--idmap", "host-unsafe"]);
    let s = ws.wait_for("running", |s| s["phase"] == "running");
    let isolation = s["preflight"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "isolation")
        .unwrap_or_else(|| panic!("no isolation check in {s}"))
        .clone();
    assert_eq!(isolation["status"], "warn", "{isolation}");
    assert_eq!(s["idmap_mode"], "none", "{s}");
    // As a person reads it.
    let out = ws
        .ctl(&["status"])
        .env("CVMCTL_FORMAT", "human")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("warn") && l.contains("isolation"))
        .unwrap_or_else(|| panic!("no isolation warning in cvmctl status:\n{shown}"));
    assert!(lines[at].contains("node's root"), "{shown}");
    assert!(
        lines[at + 1].contains("fix: unset CVMD_IDMAP"),
        "the fix follows the warning:\n{shown}"
    );
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(3), "the workspace's trap code: {stderr}");
}

/// What systemd host mode does (systemd/cvmd.env): cvmd started with
/// CVMD_STATE_DIR and no CVMD_SOCKET, and a root shell with the same
/// environment running `cvmctl status` without --socket.
#[test]
fn cvmctl_finds_the_socket_from_the_state_dir_cvmd_uses() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "api/statedir", "v1", &chatty_image());
    let state = tempfile::Builder::new()
        .prefix("cvmd-api-")
        .tempdir()
        .unwrap();
    let workspace = workspace_name(state.path());
    let child = std::process::Command::new(crate::common::cvmd_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sandbox.cache())
        .env("CVMD_STATE_DIR", state.path())
        .env("CVMD_CACHE_DIR", sandbox.cache())
        .env("CVMD_INSECURE_REGISTRIES", reg.host())
        .env("CVMD_IMAGE", &reference)
        .env("CVMD_WORKSPACE", &workspace)
        .env("CVMD_RUNTIME", "runc")
        .env("CVMD_NETWORK", "none")
        .env("CVMD_STOP_TIMEOUT", "5")
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ctl = |args: &[&str]| {
        Command::new(crate::common::cvmctl_bin())
            .env_clear()
            .env("CVMD_STATE_DIR", state.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut last = None;
    let reached = crate::common::wait_until(Duration::from_secs(60), || {
        let out = ctl(&["status", "--ready"]);
        let ok = out.status.code() == Some(0);
        last = Some(out);
        ok
    });
    let out = stop(child);
    assert!(
        reached,
        "cvmctl with only CVMD_STATE_DIR never saw the workspace run: {}\ncvmd: {}",
        text(last.as_ref().unwrap()),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(state.path());
}
