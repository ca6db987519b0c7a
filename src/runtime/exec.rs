//! `exec --detach`: the runtime starts the process and exits at once; the
//! process is re-parented to cvmd (PID 1, or a child subreaper), whose
//! reaper reports its exit (containerd's runc shim does exec this way).
//!
//! It is the only form that takes `--console-socket`: runc and sysbox-runc
//! refuse it in the foreground ("cannot use console socket if runc will
//! not detach or allocate tty", runc `checkTerminal`), where they want a
//! terminal of their own on their stdio to copy to and from. Without a
//! terminal the process inherits the runtime's stdio (runc
//! `inheritStdio`), so cvmd's pipe ends reach it with no runtime process
//! copying in between, and a failing runtime (exit 255, reason in its log)
//! is never mistaken for a command that exited 255.

use std::ffi::OsString;
use std::path::Path;

use super::RuntimeError;
use super::{attach_io, failure_message, read_pid_file, ContainerIo, ProcessIo, Runtime};

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
    /// `io` is the runtime's own (give [`ContainerIo::Null`]).
    pub async fn exec_detached(
        &self,
        id: &str,
        process: &Path,
        console_socket: Option<&Path>,
        scratch: &Path,
        io: ContainerIo,
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
}
