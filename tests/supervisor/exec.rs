//! `cvmd::exec` against a real workspace: a busybox image pushed to the real
//! `docker-registry`, assembled by `cvmd rootfs`, written as a bundle by
//! `cvmd::bundle::write_bundle` and running under the real `runc`; every
//! exec goes through `exec::spawn` with the process-wide reaper.
//!
//! Every process in this test binary is spawned through the one reaper
//! (a `Command::output()` here would race its `waitpid(-1)`). Needs root,
//! runc, busybox-static and docker-registry; skips with a reason otherwise.

use std::time::Duration;

use crate::common::exec::{is_mounted, workspace, workspace_mapped, Workspace};
use cvmd::exec::{self, ExecError, ExecSession, ExecSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cmd(args: &[&str]) -> ExecSpec {
    ExecSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..ExecSpec::default()
    }
}

/// Reads stdout and stderr to their end, then waits: (stdout, stderr, code).
async fn finish(mut s: ExecSession) -> (String, String, i32) {
    drop(s.stdin.take());
    let mut stdout = std::mem::replace(&mut s.stdout, Box::new(tokio::io::empty()));
    let stderr = s.stderr.take();
    let all = async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_err = async {
            if let Some(mut e) = stderr {
                e.read_to_end(&mut err).await.unwrap();
            }
        };
        let (r, ()) = tokio::join!(stdout.read_to_end(&mut out), read_err);
        r.unwrap();
        let code = s.wait().await.unwrap();
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            code,
        )
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("the exec ends within 30 s")
}

async fn run(ws: &Workspace, spec: ExecSpec) -> (String, String, i32) {
    finish(exec::spawn(&ws.rt, &ws.id, spec).await.unwrap()).await
}

#[tokio::test]
async fn exec_separates_stdout_and_stderr_without_a_tty_needs_root() {
    let ws = require!(workspace("streams").await);
    let (out, err, code) = run(
        &ws,
        cmd(&["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"]),
    )
    .await;
    assert_eq!(out, "to-out\nmore-out\n");
    assert_eq!(err, "to-err\n");
    assert_eq!(code, 0);
    // Nothing of the exec is left in the log dir (socket, process JSON, logs).
    let left: Vec<_> = std::fs::read_dir(ws.tmp.path().join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("exec-"))
        .collect();
    assert!(left.is_empty(), "scratch left: {left:?}");
    let rootfs = ws.rootfs.clone();
    drop(ws);
    assert!(
        !is_mounted(&rootfs),
        "the workspace's rootfs is still mounted"
    );
}

#[tokio::test]
async fn exec_pipes_stdin_needs_root() {
    let ws = require!(workspace("stdin").await);
    let mut s = exec::spawn(&ws.rt, &ws.id, cmd(&["cat"])).await.unwrap();
    let mut stdin = s.stdin.take().expect("a stdin pipe without a tty");
    stdin.write_all(b"hello\nworld\n").await.unwrap();
    drop(stdin);
    let (out, err, code) = finish(s).await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("hello\nworld\n", "", 0)
    );

    // Two execs at once in one workspace keep their own streams.
    let a = exec::spawn(&ws.rt, &ws.id, cmd(&["sh", "-c", "sleep 0.3; echo a"]));
    let b = exec::spawn(&ws.rt, &ws.id, cmd(&["sh", "-c", "echo b; exit 4"]));
    let (a, b) = tokio::join!(a, b);
    let (a, b) = tokio::join!(finish(a.unwrap()), finish(b.unwrap()));
    assert_eq!(a, ("a\n".into(), "".into(), 0));
    assert_eq!(b, ("b\n".into(), "".into(), 4));
}

#[tokio::test]
async fn exec_exit_codes_needs_root() {
    let ws = require!(workspace("codes").await);
    assert_eq!(run(&ws, cmd(&["true"])).await.2, 0);
    assert_eq!(run(&ws, cmd(&["sh", "-c", "exit 3"])).await.2, 3);
    // Killed by a signal: 128 + 9, as a shell reports it.
    assert_eq!(run(&ws, cmd(&["sh", "-c", "kill -9 $$"])).await.2, 137);

    let e = exec::spawn(&ws.rt, &ws.id, cmd(&["no-such-program", "x"]))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ExecError::Start { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 127, "{msg}");
    assert!(
        msg.contains("\"no-such-program\": executable file not found in $PATH"),
        "the runtime's own reason: {msg}"
    );
    let e = exec::spawn(&ws.rt, &ws.id, cmd(&["/etc"]))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 126, "{e}");
    assert!(e.to_string().contains("permission denied"), "{e}");

    // A stopped workspace says so.
    ws.rt.kill(&ws.id, libc::SIGKILL).await.unwrap();
    let stopped = async {
        loop {
            match exec::spawn(&ws.rt, &ws.id, cmd(&["true"])).await {
                Err(ExecError::NotRunning { .. }) => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the workspace is reported stopped");
    let e = exec::spawn(&ws.rt, &ws.id, cmd(&["true"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is stopped, not running"), "{e}");
}

#[tokio::test]
async fn exec_as_user_by_name_and_uid_needs_root() {
    let ws = require!(workspace("user").await);
    let probe = "id -u; id -g; id -G; echo $HOME; pwd";
    let as_user = |user: Option<&str>| ExecSpec {
        user: user.map(String::from),
        ..cmd(&["sh", "-c", probe])
    };
    let (out, err, code) = run(&ws, as_user(Some("bob"))).await;
    assert_eq!((err.as_str(), code), ("", 0));
    assert_eq!(out, "1000\n1000\n1000 10\n/home/bob\n/home/bob\n");
    // bob may reopen his own stdio (the pipes are his, not host root's).
    let (out, err, code) = run(
        &ws,
        ExecSpec {
            user: Some("bob".into()),
            ..cmd(&[
                "sh",
                "-c",
                "echo via-dev > /dev/stdout; echo err-dev > /dev/stderr",
            ])
        },
    )
    .await;
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("via-dev\n", "err-dev\n", 0)
    );
    let (out, _, _) = run(&ws, as_user(Some("1000"))).await;
    assert_eq!(out, "1000\n1000\n1000 10\n/home/bob\n/home/bob\n");
    // A uid without a passwd entry: its gid as given, home and cwd `/`.
    let (out, _, _) = run(&ws, as_user(Some("4242:77"))).await;
    assert_eq!(out, "4242\n77\n77\n/\n/\n");
    // The container's own user by default.
    let (out, _, _) = run(&ws, as_user(None)).await;
    assert_eq!(out, "0\n0\n0\n/root\n/root\n");

    let e = exec::spawn(&ws.rt, &ws.id, as_user(Some("alice")))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no user \"alice\" in the workspace's /etc/passwd"),
        "{e}"
    );
    assert_eq!(e.exit_code(), 125);
}

#[tokio::test]
async fn exec_env_and_cwd_needs_root() {
    let ws = require!(workspace("env").await);
    let spec = ExecSpec {
        env: vec!["FOO=bar baz".into(), "IMG=overridden".into()],
        cwd: Some("/tmp".into()),
        ..cmd(&["sh", "-c", "echo \"$FOO|$IMG|$PATH\"; pwd"])
    };
    let (out, _, code) = run(&ws, spec).await;
    assert_eq!((out.as_str(), code), ("bar baz|overridden|/bin\n/tmp\n", 0));
    // The container's environment carries over; no TERM without a tty.
    let (out, _, _) = run(&ws, cmd(&["env"])).await;
    let vars: Vec<&str> = out.lines().collect();
    assert!(vars.contains(&"IMG=from-image"), "{out}");
    assert!(vars.contains(&"HOME=/root"), "{out}");
    assert!(!vars.iter().any(|v| v.starts_with("TERM=")), "{out}");
    // A working dir that does not exist: the runtime's reason.
    let e = exec::spawn(
        &ws.rt,
        &ws.id,
        ExecSpec {
            cwd: Some("/nonexistent".into()),
            ..cmd(&["true"])
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent"), "{e}");
}

#[tokio::test]
async fn exec_in_a_user_namespace_reopens_its_stdio_needs_root() {
    let map = cvmd::rootfs::IdMap {
        host_uid: 100000,
        host_gid: 100000,
        size: 65536,
    };
    let ws = require!(workspace_mapped("userns", Some(map)).await);
    // Root and bob inside map to 100000 and 101000 outside; either may
    // reopen its stdio, which it could not if host root owned the pipes
    // (the runtime cannot chown them from inside the namespace).
    let probe =
        "id -u; cat /proc/self/uid_map; echo via-dev > /dev/stdout; echo err-dev > /dev/stderr";
    for (user, uid) in [(None, "0"), (Some("bob"), "1000")] {
        let spec = ExecSpec {
            user: user.map(String::from),
            ..cmd(&["sh", "-c", probe])
        };
        let (out, err, code) = run(&ws, spec).await;
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(
            words,
            [uid, "0", "100000", "65536", "via-dev"],
            "user {user:?}: {out}{err}"
        );
        assert_eq!((err.as_str(), code), ("err-dev\n", 0), "user {user:?}");
    }
}

/// Reads from the terminal until `want` has appeared; all that was read.
async fn read_until(
    r: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    seen: &mut String,
    want: &str,
) {
    let mut buf = [0u8; 1024];
    let wait = async {
        while !seen.contains(want) {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "the terminal ended before {want:?}: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {want:?} on the terminal within 20 s"));
}

#[tokio::test]
async fn exec_with_a_tty_needs_root() {
    let ws = require!(workspace("tty").await);
    let spec = ExecSpec {
        tty: true,
        size: Some((33, 111)),
        ..cmd(&[
            "sh",
            "-c",
            "tty; echo \"size $(stty size) term $TERM\"; read line; echo \"got $line size $(stty size)\"; exit 5",
        ])
    };
    let mut s = exec::spawn(&ws.rt, &ws.id, spec).await.unwrap();
    assert!(s.stderr.is_none(), "a terminal carries both streams");
    let mut seen = String::new();
    read_until(&mut *s.stdout, &mut seen, "term xterm").await;
    assert!(seen.contains("/dev/pts/"), "tty names a pts: {seen:?}");
    assert!(seen.contains("size 33 111 term xterm\r\n"), "{seen:?}");
    s.resize(40, 120).unwrap();
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    read_until(&mut *s.stdout, &mut seen, "got hello size 40 120\r\n").await;
    // The output ends when the process does; then its status.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.stdout.read_to_end(&mut rest))
        .await
        .expect("EOF within 20 s")
        .unwrap();
    assert_eq!(s.wait().await.unwrap(), 5);

    // Without a tty there is nothing to resize.
    let s = exec::spawn(&ws.rt, &ws.id, cmd(&["true"])).await.unwrap();
    assert!(matches!(s.resize(1, 1), Err(ExecError::NoTerminal)));
    assert_eq!(finish(s).await.2, 0);
}
