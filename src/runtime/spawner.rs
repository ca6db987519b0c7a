//! The seam between the runtime driver and process creation
//! (containerd/rust-extensions' `Spawner`): in cvmd every runtime call goes
//! through the [`Reaper`]; tests and tools that do not own a reaper use
//! [`DirectSpawner`].

use std::process::Command;

use crate::supervisor::reaper::{ExitWaiter, Reaper, ReaperError, Spawned};

/// Starts a process and hands back its pipes and its exit status to come.
pub trait Spawner: Send + Sync {
    fn spawn(&self, cmd: Command) -> Result<Spawned, ReaperError>;
}

impl Spawner for Reaper {
    fn spawn(&self, cmd: Command) -> Result<Spawned, ReaperError> {
        Reaper::spawn(self, cmd)
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
        let pid = child.id() as i32;
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
}
