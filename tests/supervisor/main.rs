//! The reaper, the runtime driver and the stop sequence against real
//! processes and the real `runc` (docs/ARCHITECTURE.md, "Real components in tests").
//!
//! Every process in this test binary is spawned through the one reaper: a
//! `std::process::Command::output()` here would race its `waitpid(-1)`.
//! That is why the exec tests ([`exec`]), which run their workspace
//! through the reaper too, share this binary and no other test does.
//! Tests that need root or runc say so with `require!`.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod exec;

use crate::common::prereq::{self, Need};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvmd::runtime::{ContainerIo, ExecSpec, Runtime, Status};
use cvmd::supervisor::reaper::{Exit, Reaper, ReaperError};
use cvmd::supervisor::signals::{supervise, StopPolicy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;

fn reaper() -> Reaper {
    Reaper::start().expect("reaper starts")
}

/// Runs `cmd` through the reaper; its status and stdout.
async fn output(mut cmd: Command) -> (Exit, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let spawned = reaper().spawn(cmd).unwrap();
    let mut out = String::new();
    pipe::Receiver::from_owned_fd(spawned.stdout.unwrap().into())
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    (spawned.exit.await.unwrap(), out)
}

/// runc, and root to run containers with it.
fn runc_as_root() -> Need<PathBuf> {
    prereq::root("runs containers with runc")?;
    prereq::runc()
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    rt: Runtime,
}

fn setup(runc: &Path) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let root = dir.join("runc-root");
    let rt = Runtime::new(runc, dir.join("logs"), Arc::new(reaper())).with_root(&root);
    Setup {
        _tmp: tmp,
        dir,
        root,
        rt,
    }
}

/// A busybox bundle whose config.json is `runc spec`'s, with our args.
async fn bundle(runc: &Path, dir: &Path, args: &[&str]) -> PathBuf {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let mut spec = Command::new(runc);
    spec.arg("spec").arg("--bundle").arg(&bundle);
    let (exit, _) = output(spec).await;
    assert!(exit.success(), "runc spec: {exit}");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!(args);
    config["process"]["terminal"] = false.into();
    config["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    bundle
}

fn id(test: &str) -> String {
    format!("cvmd-{test}-{}", std::process::id())
}

fn state_left(root: &Path, id: &str) -> bool {
    root.join(id).exists()
}

#[tokio::test]
async fn runc_container_output_and_exit_code_needs_root() {
    let runc = require!(runc_as_root());
    let s = setup(&runc);
    let bundle = bundle(&runc, &s.dir, &["sh", "-c", "echo hello; exit 7"]).await;
    let id = id("hello");
    let mut created =
        s.rt.create(
            &id,
            &bundle,
            &s.dir.join("init.pid"),
            ContainerIo::Pipes { stdin: false },
        )
        .await
        .unwrap();
    // The init is our child now: runc create has exited and we are a subreaper.
    let exit = reaper().watch(created.pid).unwrap();
    assert_eq!(s.rt.state(&id).await.unwrap().status, Status::Created);
    let mut lines = BufReader::new(created.io.stdout.take().unwrap()).lines();
    s.rt.start(&id).await.unwrap();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("output within 10 s")
        .unwrap();
    assert_eq!(line.as_deref(), Some("hello"));
    let exit = tokio::time::timeout(Duration::from_secs(10), exit)
        .await
        .expect("exit within 10 s")
        .unwrap();
    assert_eq!(exit, Exit::code(7));
    assert_eq!(lines.next_line().await.unwrap(), None, "EOF after exit");
    assert_eq!(s.rt.state(&id).await.unwrap().status, Status::Stopped);
    assert!(state_left(&s.root, &id));
    s.rt.delete(&id, false).await.unwrap();
    assert!(!state_left(&s.root, &id), "delete left state under --root");
    let err = s.rt.state(&id).await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn runc_create_over_a_killed_creates_pid_files_needs_root() {
    let runc = require!(runc_as_root());
    let s = setup(&runc);
    let bundle = bundle(&runc, &s.dir, &["sleep", "1000"]).await;
    let id = id("repid");
    // What a runc SIGKILLed mid-create leaves: its O_EXCL temp, and maybe
    // the pid file of a container long gone.
    let pid_file = s.dir.join("init.pid");
    std::fs::write(s.dir.join(".init.pid"), "").unwrap();
    std::fs::write(&pid_file, "999999").unwrap();
    let created =
        s.rt.create(&id, &bundle, &pid_file, ContainerIo::Null)
            .await
            .expect("create over the leftovers");
    assert_ne!(created.pid, 999999, "the stale pid file was read");
    assert_eq!(s.rt.state(&id).await.unwrap().status, Status::Created);
    s.rt.delete(&id, true).await.unwrap();
}

#[tokio::test]
async fn runc_sleep_stopped_by_term_then_kill_needs_root() {
    let runc = require!(runc_as_root());
    let s = setup(&runc);
    let bundle = bundle(&runc, &s.dir, &["sleep", "1000"]).await;
    let id = id("sleep");
    let created =
        s.rt.create(&id, &bundle, &s.dir.join("init.pid"), ContainerIo::Null)
            .await
            .unwrap();
    let exit = reaper().watch(created.pid).unwrap();
    s.rt.start(&id).await.unwrap();
    assert_eq!(s.rt.state(&id).await.unwrap().status, Status::Running);

    let args = ["sh", "-c", "echo from-exec; exit 3"]
        .map(String::from)
        .to_vec();
    let mut exec =
        s.rt.exec(
            &id,
            &ExecSpec::Args(args),
            false,
            ContainerIo::Pipes { stdin: false },
        )
        .await
        .unwrap();
    let mut out = String::new();
    exec.io
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "from-exec\n");
    assert_eq!(exec.wait().await.unwrap(), Exit::code(3));

    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let policy = StopPolicy {
        stop_signal: libc::SIGTERM,
        grace: Duration::from_secs(2),
        system_init: false,
    };
    let began = Instant::now();
    tx.send(libc::SIGTERM).await.unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        supervise(&s.rt, &id, created.pid, exit, policy, &mut rx),
    )
    .await
    .expect("stopped within 20 s")
    .unwrap();
    let took = began.elapsed();
    // sleep as a PID namespace's init has no SIGTERM handler, so only the
    // SIGKILL after the grace period ends it.
    assert_eq!(outcome.exit, Exit::signal(libc::SIGKILL));
    assert_eq!(outcome.code, 137);
    assert!(
        took >= Duration::from_secs(2),
        "killed before the grace: {took:?}"
    );
    outcome.deleted.unwrap();
    assert!(
        !state_left(&s.root, &id),
        "the stop left state under --root"
    );
}

#[tokio::test]
async fn runc_create_failure_reports_runcs_reason_needs_root() {
    let runc = require!(runc_as_root());
    let s = setup(&runc);
    let bundle = bundle(&runc, &s.dir, &["/bin/no-such-program"]).await;
    let id = id("nope");
    let err =
        s.rt.create(
            &id,
            &bundle,
            &s.dir.join("init.pid"),
            ContainerIo::Pipes { stdin: false },
        )
        .await
        .unwrap_err()
        .to_string();
    eprintln!("runc said: {err}");
    assert!(
        err.starts_with(&format!("runc create {id} failed: ")),
        "{err}"
    );
    assert!(
        !err.contains("runc create failed"),
        "repeated prefix: {err}"
    );
    assert!(err.contains("no-such-program"), "{err}");
    s.rt.delete(&id, true).await.ok();
    assert!(!state_left(&s.root, &id));
}

#[tokio::test]
async fn failing_runtime_script_error_from_its_json_log() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("broken-runtime");
    std::fs::write(
        &bin,
        r#"#!/bin/sh
prev=""
for a in "$@"; do [ "$prev" = "--log" ] && log="$a"; prev="$a"; done
echo '{"level":"info","msg":"setting things up","time":"2026-01-01T00:00:00Z"}' >> "$log"
echo '{"level":"error","msg":"container_linux.go:380: starting container process caused: process_linux.go:545: container init caused: rootfs_linux.go:76: mounting \"/x\" to rootfs at \"/y\" caused: no such file or directory","time":"2026-01-01T00:00:00Z"}' >> "$log"
echo "some unrelated stderr noise" >&2
exit 1
"#,
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = Runtime::new(&bin, tmp.path().join("logs"), Arc::new(reaper()));
    let mut err = None;
    // A fork elsewhere in this process may briefly hold the just-written
    // script open for writing (ETXTBSY): retry that.
    for _ in 0..50 {
        match rt
            .create("ws", tmp.path(), &tmp.path().join("pid"), ContainerIo::Null)
            .await
        {
            Err(e) if e.to_string().contains("Text file busy") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => {
                err = Some(other.unwrap_err());
                break;
            }
        }
    }
    assert_eq!(
        err.unwrap().to_string(),
        "broken-runtime create ws failed: container_linux.go:380: starting container process \
         caused: process_linux.go:545: container init caused: rootfs_linux.go:76: mounting \"/x\" \
         to rootfs at \"/y\" caused: no such file or directory"
    );
}

/// `(pid, state, ppid)` of every process in /proc.
fn processes() -> Vec<(i32, char, i32)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        all.push((pid, state, ppid));
    }
    all
}

#[tokio::test]
async fn orphaned_grandchildren_are_reaped() {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "sleep 0.1 & echo $!; exec sleep 0.3"]);
    let (exit, out) = output(cmd).await;
    assert_eq!(exit, Exit::code(0));
    let grandchild: i32 = out.trim().parse().unwrap();
    let me = std::process::id().cast_signed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The grandchild was reparented to us (subreaper) when the shell exec'd
    // away and died: the reaper collected it although nobody asked.
    assert!(
        !processes().iter().any(|p| p.0 == grandchild),
        "grandchild {grandchild} still in /proc"
    );
    assert!(
        reaper().unclaimed().contains(&(grandchild, Exit::code(0))),
        "the reaper did not see orphan {grandchild}: {:?}",
        reaper().unclaimed()
    );
    // Other tests run meanwhile: a zombie of ours may exist for a moment,
    // never for long.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies: Vec<_> = processes()
            .into_iter()
            .filter(|p| p.1 == 'Z' && p.2 == me)
            .collect();
        if zombies.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "zombies remain: {zombies:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_spawns_each_get_their_own_status() {
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let mut cmd = match i % 4 {
                0 => Command::new("true"),
                1 => Command::new("false"),
                _ => {
                    let mut c = Command::new("/bin/sh");
                    c.args(["-c", &format!("exit {}", i % 100)]);
                    c
                }
            };
            cmd.stdin(Stdio::null());
            let spawned = reaper().spawn(cmd).unwrap();
            let exit = tokio::time::timeout(Duration::from_secs(30), spawned.exit)
                .await
                .expect("status within 30 s")
                .unwrap();
            (i, exit)
        }));
    }
    for task in tasks {
        let (i, exit) = task.await.unwrap();
        let want = match i % 4 {
            0 => 0,
            1 => 1,
            _ => i % 100,
        };
        assert_eq!(exit, Exit::code(want), "spawn {i}");
    }
}

#[tokio::test]
async fn killed_child_reports_its_signal() {
    let mut cmd = Command::new("sleep");
    cmd.arg("100");
    let spawned = reaper().spawn(cmd).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawned.pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = spawned.exit.await.unwrap();
    assert_eq!(exit, Exit::signal(libc::SIGTERM));
    assert_eq!(exit.as_shell_code(), 143);
}

#[tokio::test]
async fn watching_a_stranger_is_an_error() {
    // PID 1 of this namespace is never our child.
    match reaper().watch(1) {
        Err(ReaperError::NotAChild { pid: 1, .. }) => {}
        other => panic!("expected NotAChild, got {other:?}"),
    }
}

/// The real runc for every call but `kill`, which fails as a broken or
/// wedged runtime's would.
fn runc_with_failing_kill(runc: &Path, dir: &Path) -> PathBuf {
    let wrapper = dir.join("runc-failing-kill");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = kill ] && {{ echo 'kill: operation not permitted' >&2; exit 1; }}; done\nexec {} \"$@\"\n",
            runc.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

#[tokio::test]
async fn runc_stop_escalates_when_the_runtimes_kill_fails_needs_root() {
    let runc = require!(runc_as_root());
    let s = setup(&runc);
    let rt = Runtime::new(
        runc_with_failing_kill(&runc, &s.dir),
        s.dir.join("logs"),
        Arc::new(reaper()),
    )
    .with_root(&s.root);
    // sleep as the PID namespace's init: no handler, so SIGTERM does nothing
    // and only SIGKILL ends it.
    let bundle = bundle(&runc, &s.dir, &["sleep", "1000"]).await;
    let id = id("failkill");
    let created = rt
        .create(&id, &bundle, &s.dir.join("init.pid"), ContainerIo::Null)
        .await
        .unwrap();
    let exit = reaper().watch(created.pid).unwrap();
    rt.start(&id).await.unwrap();
    assert!(
        rt.kill(&id, libc::SIGTERM).await.is_err(),
        "the wrapper's kill must fail"
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let grace = Duration::from_secs(2);
    let policy = StopPolicy {
        stop_signal: libc::SIGTERM,
        grace,
        system_init: false,
    };
    let began = Instant::now();
    tx.send(libc::SIGTERM).await.unwrap();
    // A second request (an impatient operator) while it stops.
    tx.send(libc::SIGTERM).await.unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        supervise(&rt, &id, created.pid, exit, policy, &mut rx),
    )
    .await
    .expect("the stop hung on the failing runtime kill")
    .unwrap();
    let took = began.elapsed();
    assert_eq!(outcome.exit, Exit::signal(libc::SIGKILL));
    assert_eq!(outcome.code, 137);
    // The second request's SIGKILL reached the init directly, at once:
    // neither the grace nor the wait after SIGKILL had to run out.
    assert!(
        took < grace,
        "the stop took {took:?}: the failed kill was not worked around"
    );
    outcome.deleted.unwrap();
    assert!(
        !state_left(&s.root, &id),
        "the stop left state under --root"
    );
}
