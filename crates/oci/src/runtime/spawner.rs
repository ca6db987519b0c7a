//! The seam between the runtime driver and process creation
//! (containerd/rust-extensions' `Spawner`): in cvmd every runtime call goes
//! through the [`Reaper`]; tests and tools that do not own a reaper use
//! [`DirectSpawner`].

use std::process::Command;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::reaper::{parent_of, Exit, ExitWaiter, Reaper, ReaperError, Spawned};

/// Starts a process and hands back its pipes and its exit status to come.
pub trait Spawner: Send + Sync {
    fn spawn(&self, cmd: Command) -> Result<Spawned, ReaperError>;

    /// The exit status of a process someone else started that is (or was)
    /// our child: one a runtime left running with `exec --detach`,
    /// re-parented to us when the runtime exited.
    fn watch(&self, pid: i32) -> Result<ExitWaiter, ReaperError>;
}

impl Spawner for Reaper {
    fn spawn(&self, cmd: Command) -> Result<Spawned, ReaperError> {
        Reaper::spawn(self, cmd)
    }

    fn watch(&self, pid: i32) -> Result<ExitWaiter, ReaperError> {
        Reaper::watch(self, pid)
    }
}

/// Waits for each child by its own pid on a thread of its own. Only for a
/// process that runs no [`Reaper`]: the reaper's `waitpid(-1)` would take the
/// status first.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectSpawner;

impl Spawner for DirectSpawner {
    fn spawn(&self, mut cmd: Command) -> Result<Spawned, ReaperError> {
        let mut child = cmd.spawn().map_err(|source| ReaperError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id().cast_signed();
        let (tx, exit) = ExitWaiter::channel(pid);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = tx.send(status.into());
                }
            })
            .map_err(|source| ReaperError::Thread { source })?;
        Ok(Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            exit,
        })
    }

    /// Works only for a child of ours (we are a subreaper, or the parent),
    /// and only while no `waitpid(-1)` runs in this process.
    fn watch(&self, pid: i32) -> Result<ExitWaiter, ReaperError> {
        let me = std::process::id();
        if parent_of(pid) != Some(me.cast_signed()) {
            return Err(ReaperError::NotAChild { pid, me });
        }
        let (tx, exit) = ExitWaiter::channel(pid);
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let exit = loop {
                    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
                        Ok(WaitStatus::Exited(_, code)) => break Exit::code(code),
                        Ok(WaitStatus::Signaled(_, sig, _)) => break Exit::signal(sig as i32),
                        Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                        // The sender drops: the waiter reports the loss.
                        Err(_) => return,
                    }
                };
                let _ = tx.send(exit);
            })
            .map_err(|source| ReaperError::Thread { source })?;
        Ok(exit)
    }
}
