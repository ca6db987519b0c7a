//! The driver against a stand-in runtime: a shell script that records its
//! argv, prints canned output and, when told to, fails with a JSON log line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::*;

const SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
printf '%s\n' "$@" > "$dir/argv"
log=""; pidfile=""; prev=""
for a in "$@"; do
  [ "$prev" = "--log" ] && log="$a"
  [ "$prev" = "--pid-file" ] && pidfile="$a"
  prev="$a"
done
echo '{"level":"info","msg":"stand-in runtime","time":"2026-01-01T00:00:00Z"}' >> "$log"
if [ -f "$dir/fail" ]; then
  cat "$dir/fail" >> "$log"
  echo "stderr says something else" >&2
  exit 1
fi
if [ -f "$dir/hang" ]; then
  exec sleep 1000
fi
if [ -f "$dir/fail-stderr" ]; then
  echo "only on stderr" >&2
  exit 2
fi
case " $* " in
  *" state "*) echo '{"ociVersion":"1.0.2","id":"ws1","pid":4242,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2026-01-01T00:00:00Z","owner":""}' ;;
  *" create "*) printf 4242 > "$pidfile"; echo "container says hi"; echo "container warns" >&2 ;;
  *" exec "*) if [ -n "$pidfile" ]; then printf 4243 > "$pidfile"; exit 0; fi
    echo "exec output"; exit 3 ;;
esac
exit 0
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    rt: Runtime,
}

fn fixture() -> Fixture {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let bin = dir.join("fake-runc");
    std::fs::write(&bin, SCRIPT).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_until_executable(&bin);
    let rt =
        Runtime::new(&bin, dir.join("logs"), Arc::new(DirectSpawner)).with_root("/run/cvmd-runc");
    Fixture { _dir: tmp, dir, rt }
}

/// A thread that forks while another holds a just-written script open for
/// writing leaks that descriptor into its child until it execs, and running
/// the script meanwhile fails with ETXTBSY: wait that moment out once.
fn wait_until_executable(bin: &Path) {
    for _ in 0..100 {
        match std::process::Command::new(bin)
            .arg("probe")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => return,
        }
    }
}

impl Fixture {
    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("argv"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn log(&self, id: &str, verb: &str) -> String {
        self.dir
            .join("logs")
            .join(format!("{id}-{verb}.log"))
            .display()
            .to_string()
    }

    fn expect(&self, id: &str, verb: &str, rest: &[&str]) {
        let mut want = vec![
            "--root".to_string(),
            "/run/cvmd-runc".into(),
            "--log".into(),
            self.log(id, verb),
            "--log-format".into(),
            "json".into(),
            verb.into(),
        ];
        want.extend(rest.iter().map(|s| s.to_string()));
        assert_eq!(self.argv(), want);
    }
}

#[tokio::test]
async fn argv_of_each_verb() {
    let f = fixture();
    f.rt.start("ws1").await.unwrap();
    f.expect("ws1", "start", &["ws1"]);

    f.rt.kill("ws1", 37).await.unwrap();
    f.expect("ws1", "kill", &["ws1", "37"]);

    f.rt.delete("ws1", false).await.unwrap();
    f.expect("ws1", "delete", &["ws1"]);
    f.rt.delete("ws1", true).await.unwrap();
    f.expect("ws1", "delete", &["--force", "ws1"]);

    let state = f.rt.state("ws1").await.unwrap();
    f.expect("ws1", "state", &["ws1"]);
    assert_eq!(state.status, Status::Running);
    assert_eq!(state.pid, 4242);
    assert_eq!(state.id, "ws1");
    assert_eq!(state.bundle, Path::new("/b"));

    let exec =
        f.rt.exec(
            "ws1",
            &ExecSpec::Args(vec!["sh".into(), "-c".into(), "echo hi".into()]),
            false,
            ContainerIo::Null,
        )
        .await
        .unwrap();
    // A process exiting non-zero with no runtime error is the process's status.
    assert_eq!(exec.wait().await.unwrap(), Exit::code(3));
    f.expect("ws1", "exec", &["ws1", "sh", "-c", "echo hi"]);

    let exec =
        f.rt.exec(
            "ws1",
            &ExecSpec::Process("/tmp/p.json".into()),
            true,
            ContainerIo::Null,
        )
        .await
        .unwrap();
    exec.wait().await.unwrap();
    f.expect("ws1", "exec", &["--tty", "--process", "/tmp/p.json", "ws1"]);
}

#[tokio::test]
async fn global_flags_without_root_with_systemd_cgroup() {
    let f = fixture();
    let mut rt = f.rt.clone().with_systemd_cgroup(true);
    rt.root = None;
    rt.start("ws2").await.unwrap();
    assert_eq!(
        f.argv(),
        vec![
            "--systemd-cgroup".to_string(),
            "--log".into(),
            f.log("ws2", "start"),
            "--log-format".into(),
            "json".into(),
            "start".into(),
            "ws2".into(),
        ]
    );
    // Flags sysbox-runc does not have are never passed.
    assert!(!f
        .argv()
        .iter()
        .any(|a| a == "--rootless" || a == "--pidfd-socket"));
}

#[tokio::test]
async fn create_reads_pid_file_and_hands_back_pipes() {
    let f = fixture();
    let pid_file = f.dir.join("init.pid");
    let bundle = f.dir.join("bundle");
    let mut created =
        f.rt.create(
            "ws1",
            &bundle,
            &pid_file,
            ContainerIo::Pipes { stdin: false },
        )
        .await
        .unwrap();
    f.expect(
        "ws1",
        "create",
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "ws1",
        ],
    );
    assert_eq!(created.pid, 4242);
    let mut out = String::new();
    created
        .io
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert_eq!(out, "container says hi\n");
    let mut err = String::new();
    created
        .io
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(err, "container warns\n");
}

#[tokio::test]
async fn error_comes_from_the_json_log() {
    let f = fixture();
    std::fs::write(
        f.dir.join("fail"),
        "{\"level\":\"error\",\"msg\":\"container_linux.go:380: starting container process caused: \
         exec: \\\"nope\\\": no such file or directory\",\"time\":\"2026-01-01T00:00:00Z\"}\n",
    )
    .unwrap();
    let err = f.rt.start("ws1").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "fake-runc start ws1 failed: container_linux.go:380: starting container process caused: \
         exec: \"nope\": no such file or directory"
    );
    match err {
        RuntimeError::Failed { exit, .. } => assert_eq!(exit, Exit::code(1)),
        other => panic!("unexpected {other:?}"),
    }

    // create with pipes: the runtime's stderr is the container's pipe, and
    // the log still gives the reason.
    let err =
        f.rt.create(
            "ws1",
            &f.dir,
            &f.dir.join("pid"),
            ContainerIo::Pipes { stdin: false },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("fake-runc create ws1 failed: container_linux.go:380"),
        "{err}"
    );

    // exec: a runtime error is an error, not the process's status.
    let exec =
        f.rt.exec(
            "ws1",
            &ExecSpec::Args(vec!["true".into()]),
            false,
            ContainerIo::Null,
        )
        .await
        .unwrap();
    assert!(exec
        .wait()
        .await
        .unwrap_err()
        .to_string()
        .contains("no such file or directory"));
}

#[tokio::test]
async fn error_falls_back_to_stderr() {
    let f = fixture();
    std::fs::write(f.dir.join("fail-stderr"), "").unwrap();
    let err = f.rt.kill("ws1", 15).await.unwrap_err();
    assert_eq!(err.to_string(), "fake-runc kill ws1 failed: only on stderr");
    // With pipes, create's stderr is drained from the container's pipe.
    let err =
        f.rt.create(
            "ws1",
            &f.dir,
            &f.dir.join("pid"),
            ContainerIo::Pipes { stdin: false },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "fake-runc create ws1 failed: only on stderr"
    );
}

#[tokio::test]
async fn missing_binary_says_which() {
    let f = fixture();
    let mut rt = f.rt.clone();
    rt.binary = f.dir.join("no-such-runtime");
    let err = rt.start("ws1").await.unwrap_err();
    assert!(err.to_string().contains("no-such-runtime"), "{err}");
    assert!(err.to_string().contains("CVMD_RUNTIME"), "{err}");
}

#[test]
fn state_parses_stopped_and_unknown() {
    let s: State =
        serde_json::from_str(r#"{"id":"a","pid":0,"status":"stopped","bundle":"/b"}"#).unwrap();
    assert_eq!(s.status, Status::Stopped);
    let s: State = serde_json::from_str(r#"{"id":"a","status":"weird"}"#).unwrap();
    assert_eq!(s.status, Status::Other("weird".into()));
    assert_eq!(s.pid, 0);
}

#[tokio::test]
async fn runtimes_own_prefix_is_not_repeated() {
    let f = fixture();
    std::fs::write(
        f.dir.join("fail"),
        "{\"level\":\"error\",\"msg\":\"fake-runc start failed: boom\"}\n",
    )
    .unwrap();
    let err = f.rt.start("ws1").await.unwrap_err();
    assert_eq!(err.to_string(), "fake-runc start ws1 failed: boom");
}

#[tokio::test]
async fn a_hanging_call_times_out_naming_its_verb() {
    let f = fixture();
    std::fs::write(f.dir.join("hang"), "").unwrap();
    let rt =
        f.rt.clone()
            .with_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    for (verb, result) in [
        ("start", rt.start("ws1").await.map(drop)),
        ("kill", rt.kill("ws1", 15).await.map(drop)),
        ("delete", rt.delete("ws1", true).await.map(drop)),
        ("state", rt.state("ws1").await.map(drop)),
        (
            "create",
            rt.create(
                "ws1",
                Path::new("/b"),
                &f.dir.join("pid"),
                ContainerIo::Pipes { stdin: false },
            )
            .await
            .map(drop),
        ),
    ] {
        let e = result.unwrap_err();
        assert!(
            matches!(e, RuntimeError::Timeout { verb: v, .. } if v == verb),
            "{verb}: {e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("fake-runc {verb} ws1 did not finish within 300ms")),
            "{text}"
        );
        assert!(text.contains("CVMD_RUNTIME_TIMEOUT"), "{text}");
    }
    // Five calls, each cut at its timeout: the hung runtimes were killed,
    // not waited for.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn exec_detached_passes_its_files_and_reads_the_pid() {
    let f = fixture();
    let scratch = f.dir.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let process = scratch.join("process.json");
    let socket = scratch.join("console.sock");
    let started =
        f.rt.exec_detached(
            "ws1",
            &process,
            Some(&socket),
            &scratch,
            ContainerIo::Null,
            None,
        )
        .await
        .unwrap();
    assert_eq!(started.pid, 4243);
    let argv = std::fs::read_to_string(f.dir.join("argv")).unwrap();
    let argv: Vec<&str> = argv.lines().collect();
    let log = scratch.join("runtime.log");
    let pid = scratch.join("pid");
    let want = [
        "--root",
        "/run/cvmd-runc",
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "exec",
        "--detach",
        "--pid-file",
        pid.to_str().unwrap(),
        "--console-socket",
        socket.to_str().unwrap(),
        "--process",
        process.to_str().unwrap(),
        "ws1",
    ];
    assert_eq!(argv, want);
}

#[tokio::test]
async fn exec_detached_failure_is_the_runtimes_reason() {
    let f = fixture();
    let scratch = f.dir.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::write(
        f.dir.join("fail"),
        r#"{"level":"error","msg":"exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"t"}"#,
    )
    .unwrap();
    let e =
        f.rt.exec_detached(
            "ws1",
            &scratch.join("p.json"),
            None,
            &scratch,
            ContainerIo::Pipes { stdin: true },
            // Our own ids: chowning to them needs no privilege.
            Some((
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )),
        )
        .await
        .unwrap_err();
    match &e {
        RuntimeError::Failed { verb, message, .. } => {
            assert_eq!(*verb, "exec");
            assert!(message.contains("executable file not found"), "{e}");
            assert!(
                !message.contains("stderr says"),
                "stderr is the process's: {e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn direct_spawner_watches_only_its_children() {
    // The watch reaps it, not `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new("sh")
        .args(["-c", "exit 6"])
        .spawn()
        .unwrap();
    let exit = DirectSpawner.watch(child.id().cast_signed()).unwrap();
    assert_eq!(exit.await.unwrap(), Exit::code(6));
    // Not ours: pid 1 (or our parent) has another parent.
    let parent = nix::unistd::getppid().as_raw();
    assert!(matches!(
        DirectSpawner.watch(parent),
        Err(crate::reaper::ReaperError::NotAChild { .. })
    ));
}
