//! The exec engine behind `cvmctl exec`: runs a command inside the running
//! workspace through the OCI runtime's `exec`, as `docker exec` does.
//!
//! The process is described by a process JSON (`exec --process`) built from
//! the container's own process ([`plan`]), and started with `exec --detach`
//! in both modes (see `runtime/exec.rs` for why): the runtime exits once the
//! process runs, the process is re-parented to cvmd, and its exit status
//! comes from the one reaper ([`crate::runtime::Spawner::watch`]), never
//! from waiting on a child of our own. Without a TTY the process gets
//! cvmd's pipes as stdin/stdout/stderr; with one, the runtime makes a
//! terminal inside the container and sends its master over a console
//! socket ([`console`]), which cvmd streams both ways ([`pty`]).
//!
//! A command that cannot start is an [`ExecError::Start`] carrying the
//! runtime's own reason and `docker exec`'s exit code (127 not found, 126
//! not executable).

mod console;
mod error;
pub mod hangup;
pub mod plan;
pub mod pty;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use error::{start_failure_code, ExecError, CANNOT_INVOKE, ENGINE_FAILED, NOT_FOUND};

use crate::bundle::{dir_in_rootfs, read_etc, RuntimeFlavor};
use crate::reaper::ExitWaiter;
use crate::runtime::{ContainerIo, Runtime, RuntimeError, Status};
use console::ConsoleSocket;

/// How long the terminal may take to arrive once the runtime has started
/// the process (it is sent before the process execs, so this is slack).
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run, as `docker exec` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// A name, uid, name:group or uid:gid, resolved in the workspace; the
    /// container's user when `None`.
    pub user: Option<String>,
    /// `NAME=VALUE` entries over the container's environment.
    pub env: Vec<String>,
    /// Absolute; the user's home (or `/`) when `None`.
    pub cwd: Option<String>,
    pub tty: bool,
    /// (rows, cols) of the terminal, with `tty`.
    pub size: Option<(u16, u16)>,
}

/// A running exec. Read `stdout` (and `stderr`) to their end, then `wait`.
///
/// The streams end when every holder of them has closed them, which a
/// background child of the command can put off past the command's own
/// exit; a client that must not hang on one waits for the exit alongside
/// and then drains what is buffered. Dropping the session leaves the
/// process running; with a TTY, dropping every end of the terminal hangs it
/// up (SIGHUP), as closing a terminal window does.
pub struct ExecSession {
    /// The process's stdin; drop it for EOF (with a TTY, send Ctrl-D).
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// `None` with a TTY: the terminal carries both streams.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pid: i32,
    master: Option<pty::Master>,
    exit: ExitWaiter,
    signaller: Option<hangup::Signaller>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("pid", &self.pid)
            .field("tty", &self.master.is_some())
            .finish_non_exhaustive()
    }
}

impl ExecSession {
    /// The process's pid in cvmd's PID namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What signals the process (for a hang-up when its client is gone);
    /// `None` when no pidfd could be opened for it.
    pub fn signaller(&self) -> Option<hangup::Signaller> {
        self.signaller.clone()
    }

    /// Sets the terminal's size (TIOCSWINSZ); the process gets SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ExecError> {
        let master = self.master.as_ref().ok_or(ExecError::NoTerminal)?;
        master
            .set_size(rows, cols)
            .map_err(|source| ExecError::Resize { rows, cols, source })
    }

    /// The process's exit code; 128 + the signal when a signal killed it.
    pub async fn wait(self) -> Result<i32, ExecError> {
        let pid = self.pid;
        let exit = self
            .exit
            .await
            .map_err(|source| ExecError::Wait { pid, source })?;
        tracing::debug!(pid, %exit, "exec ended");
        Ok(exit.as_shell_code())
    }
}

/// Starts `spec` in the running container `container_id`.
pub async fn spawn(
    runtime: &Runtime,
    container_id: &str,
    spec: ExecSpec,
) -> Result<ExecSession, ExecError> {
    let id = container_id;
    plan::validate(&spec)?;
    if RuntimeFlavor::of_runtime(&runtime.binary.to_string_lossy()) == RuntimeFlavor::Sysbox {
        plan::check_sysbox_env(&spec.env)?;
    }
    let state = runtime.state(id).await.map_err(|source| ExecError::State {
        id: id.into(),
        source: Box::new(source),
    })?;
    if state.status != Status::Running {
        let status = match state.status {
            Status::Creating => "being created".into(),
            Status::Created => "created but not started".into(),
            Status::Paused => "paused".into(),
            Status::Stopped => "stopped".into(),
            Status::Other(s) => s,
            Status::Running => unreachable!("checked above"),
        };
        return Err(ExecError::NotRunning {
            id: id.into(),
            status,
        });
    }
    let (base, rootfs) = read_bundle(id, &state.bundle)?;
    let etc = |file: &str| -> Result<Option<String>, ExecError> {
        read_etc(&rootfs, id, file).map_err(|e| ExecError::User {
            id: id.into(),
            value: spec.user.clone().unwrap_or_default(),
            reason: e.to_string(),
        })
    };
    let (passwd, group) = (etc("passwd")?, etc("group")?);
    let target = plan::target(
        id,
        &base,
        spec.user.as_deref(),
        passwd.as_deref(),
        group.as_deref(),
    )?;
    let base_home = plan::home_of(id, base.user().uid(), passwd.as_deref());
    let env = plan::env(
        base.env().as_deref().unwrap_or_default(),
        base_home.as_deref(),
        &target,
        spec.tty,
        &spec.env,
    );
    let cwd = match &spec.cwd {
        Some(cwd) => cwd.clone(),
        None => plan::default_cwd(&target.home, |p| dir_in_rootfs(&rootfs, p)),
    };
    let process = plan::process(&base, &spec, &target, env, &cwd);

    let scratch = Scratch::new(&runtime.log_dir)?;
    let process_file = scratch.path.join("process.json");
    std::fs::write(
        &process_file,
        serde_json::to_vec(&process).expect("a process serialises"),
    )
    .map_err(|source| ExecError::Scratch {
        path: process_file.clone(),
        source,
    })?;
    // Listening before the runtime starts: it connects as it sets up the
    // process, and the master waits in the socket until we take it.
    let console = if spec.tty {
        let path = scratch.path.join("console.sock");
        let socket = ConsoleSocket::bind(&path)
            .map_err(|source| ExecError::ConsoleSocket { path, source })?;
        let path = socket.path().to_path_buf();
        Some((tokio::spawn(socket.receive()), path))
    } else {
        None
    };
    let (io, owner) = if spec.tty {
        (ContainerIo::Null, None)
    } else {
        (
            ContainerIo::Pipes { stdin: true },
            pipe_owner(state.pid, &target),
        )
    };
    let started = runtime
        .exec_detached(
            id,
            &process_file,
            console.as_ref().map(|(_, p)| p.as_path()),
            &scratch.path,
            io,
            owner,
        )
        .await;
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            if let Some((receiving, _)) = &console {
                receiving.abort();
            }
            return Err(start_error(id, &spec.args[0], e));
        }
    };
    let pid = started.pid;
    tracing::info!(id, pid, args = ?spec.args, tty = spec.tty, uid = target.uid, "exec started");
    let exit = match runtime.spawner.watch(pid) {
        Ok(exit) => exit,
        Err(source) => {
            kill_untracked(pid);
            return Err(ExecError::Watch {
                id: id.into(),
                pid,
                source,
            });
        }
    };
    // Opened now, while the process is ours and unreaped (see hangup.rs).
    let signaller = hangup::Signaller::open(pid)
        .map_err(|e| tracing::warn!(pid, error = %e, "no pidfd for the exec: it cannot be hung up"))
        .ok();
    let session = match console {
        None => {
            let io = started.io;
            let (Some(stdin), Some(stdout), Some(stderr)) = (io.stdin, io.stdout, io.stderr) else {
                unreachable!("ContainerIo::Pipes with stdin gives all three pipes");
            };
            ExecSession {
                stdin: Some(Box::new(stdin)),
                stdout: Box::new(stdout),
                stderr: Some(Box::new(stderr)),
                pid,
                master: None,
                exit,
                signaller,
            }
        }
        Some((receiving, _)) => {
            let master = match receive_master(id, receiving, spec.size).await {
                Ok(m) => m,
                Err(e) => {
                    kill_untracked(pid);
                    return Err(e);
                }
            };
            ExecSession {
                stdin: Some(Box::new(master.writer())),
                stdout: Box::new(master.reader()),
                stderr: None,
                pid,
                master: Some(master),
                exit,
                signaller,
            }
        }
    };
    Ok(session)
}

/// Who should own the exec's pipes on the host: its user as the
/// container's init maps it (a user namespace shifts it; without one the
/// map is the identity). `None`, and host root keeps them, when the map
/// cannot be read or leaves the user unmapped.
fn pipe_owner(init: i32, target: &plan::Target) -> Option<(u32, u32)> {
    let read = |file: &str| std::fs::read_to_string(format!("/proc/{init}/{file}")).ok();
    let uid = plan::host_id(target.uid, &read("uid_map")?)?;
    let gid = plan::host_id(target.gid, &read("gid_map")?)?;
    Some((uid, gid))
}

/// Kills an exec'd process nobody can talk to or wait for, rather than
/// leave it running unseen. It was started a moment ago and is our child
/// (alive or a zombie), so the pid is still its own.
fn kill_untracked(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The container's process and its rootfs, from the bundle's config.json.
fn read_bundle(
    id: &str,
    bundle: &Path,
) -> Result<(oci_spec::runtime::Process, PathBuf), ExecError> {
    let path = bundle.join("config.json");
    let err = |reason: String| ExecError::Bundle {
        id: id.into(),
        path: path.clone(),
        reason,
    };
    let spec = oci_spec::runtime::Spec::load(&path).map_err(|e| err(e.to_string()))?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| err("it has no process to start from".into()))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| err("it names no root file system".into()))?;
    // OCI runtime spec, "Root": a relative path is relative to the bundle.
    Ok((process, bundle.join(root.path())))
}

async fn receive_master(
    id: &str,
    receiving: tokio::task::JoinHandle<Result<OwnedFd, String>>,
    size: Option<(u16, u16)>,
) -> Result<pty::Master, ExecError> {
    let err = |reason: String| ExecError::Console {
        id: id.into(),
        reason,
    };
    let fd = match tokio::time::timeout(CONSOLE_TIMEOUT, receiving).await {
        Err(_) => {
            return Err(err(format!(
                "nothing arrived within {}s of the process starting",
                CONSOLE_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(join)) => return Err(err(join.to_string())),
        Ok(Ok(received)) => received.map_err(err)?,
    };
    let master = pty::Master::new(fd).map_err(|e| err(e.to_string()))?;
    // The runtime sized it from the process JSON already; this also
    // covers a runtime that ignores `consoleSize`.
    if let Some((rows, cols)) = size {
        master
            .set_size(rows, cols)
            .map_err(|source| ExecError::Resize { rows, cols, source })?;
    }
    Ok(master)
}

/// The runtime's failure to start the command: its own reason, with
/// `docker exec`'s code; other runtime failures as they are.
fn start_error(id: &str, command: &str, e: RuntimeError) -> ExecError {
    match e {
        RuntimeError::Failed { message, .. } => {
            let message = error::runtime_reason(&message).to_string();
            ExecError::Start {
                id: id.into(),
                command: command.into(),
                code: start_failure_code(&message),
                message,
            }
        }
        source => ExecError::Runtime {
            id: id.into(),
            source: Box::new(source),
        },
    }
}

/// A private directory (0700) for one exec's process JSON, console socket,
/// pid file and runtime log; removed when the exec has started or failed.
struct Scratch {
    path: PathBuf,
}

/// sockaddr_un holds 108 bytes with the NUL; the runtime must reach the
/// console socket by its path.
const SOCKET_PATH_MAX: usize = 100;

impl Scratch {
    fn new(log_dir: &Path) -> Result<Scratch, ExecError> {
        let make = |dir: &Path| -> Result<PathBuf, ExecError> {
            let template = dir.join("exec-XXXXXX");
            std::fs::create_dir_all(dir)
                .and_then(|()| nix::unistd::mkdtemp(&template).map_err(std::io::Error::from))
                .map_err(|source| ExecError::Scratch {
                    path: template.clone(),
                    source,
                })
        };
        let longest = log_dir.join("exec-XXXXXX/console.sock");
        let path = if longest.as_os_str().len() <= SOCKET_PATH_MAX {
            make(log_dir)?
        } else {
            make(&std::env::temp_dir())?
        };
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an exec's scratch dir");
        }
    }
}
