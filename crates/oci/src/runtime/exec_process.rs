//! `exec`, in the foreground ([`Runtime::exec`]: the runtime stays the
//! process's parent and exits with its status) and detached
//! ([`Runtime::exec_detached`]: the runtime starts the process and exits at
//! once; the process is re-parented to cvmd, PID 1 or a child subreaper,
//! whose reaper reports its exit, as containerd's runc shim does it).
//!
//! Only the detached form takes `--console-socket`: runc and sysbox-runc
//! refuse it in the foreground ("cannot use console socket if runc will
//! not detach or allocate tty", runc `checkTerminal`), where they want a
//! terminal of their own on their stdio to copy to and from. Detached
//! without a terminal, the process inherits the runtime's stdio (runc
//! `inheritStdio`), so cvmd's pipe ends reach it with no runtime process
//! copying in between, and a failing runtime (exit 255, reason in its log)
//! is never mistaken for a command that exited 255.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{attach_io, error_from_log, failure_message, read_pid_file, Call};
use super::{ContainerIo, ProcessIo, Runtime, RuntimeError};
use crate::reaper::{Exit, ExitWaiter};

/// What `exec` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecSpec {
    /// An OCI `process` JSON file (`exec --process FILE`).
    Process(PathBuf),
    /// A command line, run with the container's process settings.
    Args(Vec<String>),
}

/// A running `exec`: the runtime stays in the foreground and exits with the
/// process's status.
#[derive(Debug)]
pub struct Exec {
    pub io: ProcessIo,
    call: Call,
    exit: ExitWaiter,
}

impl Exec {
    /// The process's status; an error when the runtime itself failed (it
    /// logged an error), so a process exiting 1 is not mistaken for one.
    pub async fn wait(self) -> Result<Exit, RuntimeError> {
        let exit = self
            .exit
            .await
            .map_err(|source| self.call.wait_error(source))?;
        if !exit.success() {
            let log = std::fs::read_to_string(&self.call.log).unwrap_or_default();
            if let Some(message) = error_from_log(&log) {
                return Err(self.call.failed(exit, message));
            }
        }
        Ok(exit)
    }
}

/// A process the runtime started and left running.
#[derive(Debug)]
pub struct Detached {
    /// Its pid in cvmd's PID namespace (the runtime's `--pid-file`).
    pub pid: i32,
    pub io: ProcessIo,
}

impl Runtime {
    /// `exec --detach --pid-file SCRATCH/pid [--console-socket SOCKET]
    /// --process PROCESS ID`, run to its end. `scratch` is a private
    /// directory of this call: the pid file and the call's own log go
    /// there, so concurrent execs in one container never share a log.
    /// With a console socket the process's stdio is the new terminal, and
    /// `io` is the runtime's own (give [`ContainerIo::Null`]). With pipes,
    /// `owner` (host uid, gid) gets them before the process starts, so a
    /// non-root user (or a user-namespaced root) can reopen its own
    /// `/dev/stdout`, which a pipe owned by host root with mode 0600
    /// refuses.
    pub async fn exec_detached(
        &self,
        id: &str,
        process: &Path,
        console_socket: Option<&Path>,
        scratch: &Path,
        io: ContainerIo,
        owner: Option<(u32, u32)>,
    ) -> Result<Detached, RuntimeError> {
        let pid_file = scratch.join("pid");
        let mut args: Vec<OsString> = vec![
            "--detach".into(),
            "--pid-file".into(),
            pid_file.clone().into(),
        ];
        if let Some(socket) = console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        args.extend(["--process".into(), process.into(), id.into()]);
        let (mut cmd, call) = self.command_logged("exec", id, scratch.join("runtime.log"), args)?;
        let ours = attach_io(&mut cmd, io, id)?;
        if let Some((uid, gid)) = owner {
            chown_pipes(&ours, uid, gid).map_err(|source| RuntimeError::Pipe {
                id: id.to_string(),
                source,
            })?;
        }
        let spawned = self.spawn(cmd, &call)?;
        let exit = spawned
            .exit
            .await
            .map_err(|source| call.wait_error(source))?;
        if !exit.success() {
            // Not the process's stderr: with pipes that is the process's
            // stream, which the caller reads. The log has the reason.
            let log = std::fs::read_to_string(&call.log).unwrap_or_default();
            return Err(call.failed(exit, failure_message(&log, b"", exit)));
        }
        let pid = read_pid_file(&pid_file).map_err(|reason| RuntimeError::PidFile {
            runtime: call.runtime.clone(),
            verb: call.verb,
            id: id.to_string(),
            path: pid_file.clone(),
            reason,
        })?;
        tracing::debug!(id, pid, "exec started");
        Ok(Detached { pid, io: ours })
    }

    /// `exec [--tty] [--process FILE] ID [ARGS...]` in the foreground.
    pub async fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        tty: bool,
        io: ContainerIo,
    ) -> Result<Exec, RuntimeError> {
        let mut args: Vec<OsString> = Vec::new();
        if tty {
            args.push("--tty".into());
        }
        match spec {
            ExecSpec::Process(path) => {
                args.extend(["--process".into(), path.into(), id.into()]);
            }
            ExecSpec::Args(argv) => {
                args.push(id.into());
                args.extend(argv.iter().map(OsString::from));
            }
        }
        let (mut cmd, call) = self.command("exec", id, args)?;
        let ours = attach_io(&mut cmd, io, id)?;
        let spawned = self.spawn(cmd, &call)?;
        Ok(Exec {
            io: ours,
            call,
            exit: spawned.exit,
        })
    }
}

/// Both ends of a pipe are one inode: chowning ours chowns the child's.
fn chown_pipes(io: &ProcessIo, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let owner = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    let fds = [
        io.stdin.as_ref().map(|p| p.as_fd()),
        io.stdout.as_ref().map(|p| p.as_fd()),
        io.stderr.as_ref().map(|p| p.as_fd()),
    ];
    for fd in fds.into_iter().flatten() {
        rustix::fs::fchown(fd, owner.0, owner.1)?;
    }
    Ok(())
}
