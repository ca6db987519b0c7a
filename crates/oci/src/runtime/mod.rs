//! The OCI runtime command line driver: `create`, `start`, `state`, `kill`,
//! `delete` and `exec` of `sysbox-runc` (or `runc`, same CLI).
//!
//! Every call passes `--root` when set and `--log FILE --log-format json`,
//! and on failure reports the runtime's own reason from that log
//! (containerd/rust-extensions' runc crate). Only flags sysbox-runc has are
//! used: no `--rootless`, no `--pidfd-socket` (docs/ARCHITECTURE.md, "The sysbox-runc
//! contract"). Processes are started through a [`Spawner`], in cvmd the
//! process-wide reaper.

mod error;
mod exec_process;
mod spawner;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tracing::Instrument;

pub use error::{error_from_log, failure_message, RuntimeError};
pub use exec_process::{Detached, Exec, ExecSpec};
pub use spawner::{DirectSpawner, Spawner};

use crate::reaper::{Exit, ExitWaiter, Spawned};

/// Where the container's (or exec'd process's) stdio goes. With
/// `terminal: false` the runtime hands its own stdio to the process, so
/// these become the runtime's stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerIo {
    /// stdin from /dev/null, stdout and stderr to /dev/null.
    Null,
    /// cvmd's own stdio.
    Inherit,
    /// stdout and stderr to pipes cvmd reads; stdin a pipe too when asked,
    /// else /dev/null.
    Pipes { stdin: bool },
}

/// The pipe ends cvmd keeps for a process started with [`ContainerIo::Pipes`].
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// A created (not yet started) container.
#[derive(Debug)]
pub struct Created {
    /// The container's init, from `--pid-file`; wait for it with
    /// `Reaper::watch`.
    pub pid: i32,
    pub io: ProcessIo,
}

/// The container status as `state` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    Other(String),
}

impl From<String> for Status {
    fn from(s: String) -> Status {
        match s.as_str() {
            "creating" => Status::Creating,
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            _ => Status::Other(s),
        }
    }
}

/// The output of `state ID` (OCI runtime spec, "State").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    pub id: String,
    pub status: Status,
    /// 0 once the container has stopped.
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub bundle: PathBuf,
}

/// The driver. Cheap to clone; calls for different containers may run
/// concurrently.
#[derive(Clone)]
pub struct Runtime {
    /// `sysbox-runc`, `runc`, or a path.
    pub binary: PathBuf,
    /// The runtime's state directory (`--root`); its default when `None`.
    pub root: Option<PathBuf>,
    pub systemd_cgroup: bool,
    /// Where each call's JSON log goes: `<id>-<verb>.log`.
    pub log_dir: PathBuf,
    pub spawner: Arc<dyn Spawner>,
    /// How long `create`, `start`, `kill`, `delete` and `state` may take: a
    /// runtime stuck on a hung mount or daemon must not hang PID 1.
    pub timeout: Duration,
}

/// The default of [`Runtime::timeout`]: generous, since sysbox-runc's
/// `create` may chown a large rootfs where ID-mapped mounts are missing.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("binary", &self.binary)
            .field("root", &self.root)
            .field("systemd_cgroup", &self.systemd_cgroup)
            .field("log_dir", &self.log_dir)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One invocation, for naming it in errors.
#[derive(Debug, Clone)]
struct Call {
    runtime: String,
    verb: &'static str,
    id: String,
    log: PathBuf,
}

impl Call {
    fn failed(&self, exit: Exit, message: String) -> RuntimeError {
        // runc wraps its reason as "runc create failed: ..."; we say that already.
        let ours = format!(" {} failed: ", self.verb);
        let message = match message.split_once(&ours) {
            Some((who, rest)) if !who.contains(' ') && !rest.is_empty() => rest.to_string(),
            _ => message,
        };
        RuntimeError::Failed {
            runtime: self.runtime.clone(),
            verb: self.verb,
            id: self.id.clone(),
            exit,
            message,
        }
    }

    fn wait_error(&self, source: crate::reaper::ReaperError) -> RuntimeError {
        RuntimeError::Wait {
            runtime: self.runtime.clone(),
            verb: self.verb,
            id: self.id.clone(),
            source,
        }
    }

    /// Kills the runtime process that overran `after` (only while its exit
    /// has not been seen, so the pid cannot have been reused) and names it.
    fn timed_out(&self, pid: i32, exited: &AtomicBool, after: Duration) -> RuntimeError {
        if !exited.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        RuntimeError::Timeout {
            runtime: self.runtime.clone(),
            verb: self.verb,
            id: self.id.clone(),
            after,
        }
    }

    fn output_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Output {
            runtime: self.runtime.clone(),
            verb: self.verb,
            id: self.id.clone(),
            source,
        }
    }
}

impl Runtime {
    pub fn new(
        binary: impl Into<PathBuf>,
        log_dir: impl Into<PathBuf>,
        spawner: Arc<dyn Spawner>,
    ) -> Runtime {
        Runtime {
            binary: binary.into(),
            root: None,
            systemd_cgroup: false,
            log_dir: log_dir.into(),
            spawner,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Runtime {
        self.timeout = timeout;
        self
    }

    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Runtime {
        self.root = Some(root.into());
        self
    }

    pub fn with_systemd_cgroup(mut self, on: bool) -> Runtime {
        self.systemd_cgroup = on;
        self
    }

    fn name(&self) -> String {
        self.binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.binary.display().to_string())
    }

    /// The global flags, then the verb and its arguments. The log is emptied
    /// first so that its last error line belongs to this call.
    fn command(
        &self,
        verb: &'static str,
        id: &str,
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<(Command, Call), RuntimeError> {
        let log = self.log_dir.join(format!("{id}-{verb}.log"));
        self.command_logged(verb, id, log, args)
    }

    /// [`Self::command`] with the log at `log`: for calls that may run
    /// concurrently for one container (exec), each with its own log.
    fn command_logged(
        &self,
        verb: &'static str,
        id: &str,
        log: PathBuf,
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<(Command, Call), RuntimeError> {
        std::fs::create_dir_all(&self.log_dir)
            .and_then(|()| File::create(&log))
            .map_err(|source| RuntimeError::Log {
                path: log.clone(),
                source,
            })?;
        let mut cmd = Command::new(&self.binary);
        // runc given NOTIFY_SOCKET (cvmd under systemd's Type=notify)
        // proxies it into the container and waits for the workspace's own
        // READY=1: systemd's readiness is cvmd's to report (supervisor::notify).
        cmd.env_remove("NOTIFY_SOCKET");
        if let Some(root) = &self.root {
            cmd.arg("--root").arg(root);
        }
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.arg("--log")
            .arg(&log)
            .args(["--log-format", "json", verb])
            .args(args);
        let call = Call {
            runtime: self.name(),
            verb,
            id: id.to_string(),
            log,
        };
        Ok((cmd, call))
    }

    fn spawn(&self, cmd: Command, call: &Call) -> Result<Spawned, RuntimeError> {
        tracing::debug!(runtime = %call.runtime, verb = call.verb, id = %call.id, "runtime call");
        self.spawner
            .spawn(cmd)
            .map_err(|source| RuntimeError::Spawn {
                binary: self.binary.clone(),
                verb: call.verb,
                source,
            })
    }

    /// Runs a call to completion; its stdout on success.
    async fn run(&self, mut cmd: Command, call: Call) -> Result<Vec<u8>, RuntimeError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = self.spawn(cmd, &call)?;
        let pid = spawned.pid;
        let exited = AtomicBool::new(false);
        let out = read_all(spawned.stdout.map(OwnedFd::from));
        let err = read_all(spawned.stderr.map(OwnedFd::from));
        let exit = watch_exit(spawned.exit, &exited);
        let (out, err, exit) = match tokio::time::timeout(self.timeout, async {
            tokio::join!(out, err, exit)
        })
        .await
        {
            Ok(all) => all,
            Err(_) => return Err(call.timed_out(pid, &exited, self.timeout)),
        };
        let exit = exit.map_err(|source| call.wait_error(source))?;
        let out = out.map_err(|e| call.output_error(e))?;
        let err = err.unwrap_or_default();
        if exit.success() {
            return Ok(out);
        }
        let log = std::fs::read_to_string(&call.log).unwrap_or_default();
        Err(call.failed(exit, failure_message(&log, &err, exit)))
    }

    /// `create --bundle BUNDLE --pid-file PID_FILE ID`: the container's init
    /// waits for `start`. Returns its pid and, with [`ContainerIo::Pipes`],
    /// cvmd's ends of its stdio.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: ContainerIo,
    ) -> Result<Created, RuntimeError> {
        self.create_inner(id, bundle, pid_file, io)
            .instrument(tracing::info_span!("create", id))
            .await
    }

    async fn create_inner(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: ContainerIo,
    ) -> Result<Created, RuntimeError> {
        clear_pid_file(pid_file);
        let (mut cmd, call) = self.command(
            "create",
            id,
            [
                "--bundle".into(),
                bundle.into(),
                "--pid-file".into(),
                pid_file.into(),
                id.into(),
            ],
        )?;
        let mut ours = attach_io(&mut cmd, io, id)?;
        let spawned = self.spawn(cmd, &call)?;
        // `cmd` is gone: the runtime and, after it, the container hold the
        // only write ends, so our reads end when the container's output does.
        let exited = AtomicBool::new(false);
        let exit = match tokio::time::timeout(self.timeout, watch_exit(spawned.exit, &exited)).await
        {
            Ok(exit) => exit.map_err(|source| call.wait_error(source))?,
            Err(_) => return Err(call.timed_out(spawned.pid, &exited, self.timeout)),
        };
        if !exit.success() {
            // With pipes, the runtime's stderr is our pipe; it has exited and
            // killed the half-made init, so the pipe drains to its end.
            let err = match ours.stderr.take() {
                Some(rx) => tokio::time::timeout(Duration::from_secs(2), read_pipe(rx))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let log = std::fs::read_to_string(&call.log).unwrap_or_default();
            return Err(call.failed(exit, failure_message(&log, &err, exit)));
        }
        let pid = read_pid_file(pid_file).map_err(|reason| RuntimeError::PidFile {
            runtime: call.runtime.clone(),
            verb: call.verb,
            id: id.to_string(),
            path: pid_file.to_path_buf(),
            reason,
        })?;
        tracing::info!(pid, "created");
        Ok(Created { pid, io: ours })
    }

    /// `start ID`: the init execs the container's process.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let (cmd, call) = self.command("start", id, [id.into()])?;
        self.run(cmd, call)
            .instrument(tracing::info_span!("start", id))
            .await
            .map(drop)
    }

    /// `state ID`.
    pub async fn state(&self, id: &str) -> Result<State, RuntimeError> {
        let (cmd, call) = self.command("state", id, [id.into()])?;
        let out = self.run(cmd, call.clone()).await?;
        serde_json::from_slice(&out).map_err(|source| RuntimeError::State {
            runtime: call.runtime,
            id: id.to_string(),
            source,
        })
    }

    /// `kill ID SIGNAL`, the signal as a number (sysbox-runc takes `37` for
    /// SIGRTMIN+3); to the init only (`--all` off): the init dying takes the
    /// container's PID namespace with it.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let (cmd, call) = self.command("kill", id, [id.into(), signal.to_string().into()])?;
        self.run(cmd, call).await.map(drop)
    }

    /// `delete [--force] ID`. Always delete, even after a crash: sysbox-runc
    /// reverts rootfs ownership and unregisters from its daemons here.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = Vec::new();
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        let (cmd, call) = self.command("delete", id, args)?;
        self.run(cmd, call).await.map(drop)
    }
}

/// Awaits an exit and records that it came, for [`Call::timed_out`].
async fn watch_exit(
    exit: ExitWaiter,
    exited: &AtomicBool,
) -> Result<Exit, crate::reaper::ReaperError> {
    let result = exit.await;
    exited.store(true, Ordering::SeqCst);
    result
}

/// Points the command's stdio where `io` says; returns cvmd's pipe ends.
fn attach_io(cmd: &mut Command, io: ContainerIo, id: &str) -> Result<ProcessIo, RuntimeError> {
    let pipe_err = |source| RuntimeError::Pipe {
        id: id.to_string(),
        source,
    };
    match io {
        ContainerIo::Null => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Ok(ProcessIo::default())
        }
        ContainerIo::Inherit => {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
            Ok(ProcessIo::default())
        }
        ContainerIo::Pipes { stdin } => {
            let mut ours = ProcessIo::default();
            if stdin {
                let (r, w) = os_pipe().map_err(pipe_err)?;
                cmd.stdin(Stdio::from(r));
                ours.stdin = Some(pipe::Sender::from_owned_fd(w).map_err(pipe_err)?);
            } else {
                cmd.stdin(Stdio::null());
            }
            let (r, w) = os_pipe().map_err(pipe_err)?;
            cmd.stdout(Stdio::from(w));
            ours.stdout = Some(pipe::Receiver::from_owned_fd(r).map_err(pipe_err)?);
            let (r, w) = os_pipe().map_err(pipe_err)?;
            cmd.stderr(Stdio::from(w));
            ours.stderr = Some(pipe::Receiver::from_owned_fd(r).map_err(pipe_err)?);
            Ok(ours)
        }
    }
}

/// A close-on-exec pipe (read end, write end); the spawn dup2s the child's
/// end onto its stdio, which clears close-on-exec there only.
fn os_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

async fn read_pipe(mut rx: pipe::Receiver) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    rx.read_to_end(&mut buf).await?;
    Ok(buf)
}

async fn read_all(fd: Option<OwnedFd>) -> std::io::Result<Vec<u8>> {
    match fd {
        Some(fd) => read_pipe(pipe::Receiver::from_owned_fd(fd)?).await,
        None => Ok(Vec::new()),
    }
}

/// Removes a pid file and the temp file runc writes it through (`.NAME`,
/// created with O_EXCL, then renamed): a runc killed between the two (its
/// pod SIGKILLed mid-create) leaves the temp, and every later create on the
/// same state dir fails with "open .NAME: file exists".
fn clear_pid_file(path: &Path) {
    let temp = path.file_name().map(|name| {
        let mut dotted = std::ffi::OsString::from(".");
        dotted.push(name);
        path.with_file_name(dotted)
    });
    for stale in std::iter::once(path.to_path_buf()).chain(temp) {
        match std::fs::remove_file(&stale) {
            Ok(()) => {
                tracing::debug!(path = %stale.display(), "removed a pid file an earlier create left")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %stale.display(), error = %e, "cannot remove an earlier create's pid file")
            }
        }
    }
}

fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("it holds {:?}, not a pid", text.trim())),
    }
}

#[cfg(test)]
mod tests;
