//! Ending an exec whose client went away, as a terminal's hang-up does:
//! SIGHUP, then SIGKILL once a grace has passed, then the exit reaped, so
//! neither the process nor the task serving it outlives the client.
//!
//! Signals go through a [`Signaller`] (a pidfd), so a late one never
//! reaches a process that took the pid over.

use std::future::Future;
use std::time::Duration;

pub use crate::pidfd::Signaller;

/// How long a hung-up exec has to end before SIGKILL (a shell saving its
/// history, an editor its swap file).
pub const HANGUP_GRACE: Duration = Duration::from_secs(5);

/// What a hang-up came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    /// It ended within the grace after SIGHUP.
    EndedOnHup,
    /// It needed SIGKILL.
    Killed,
}

/// SIGHUP, then SIGKILL after `grace` unless `exited` resolved first; then
/// waits for `exited`. SIGKILL cannot be caught, so the wait after it ends
/// unless the process is stuck in the kernel.
pub async fn hang_up<T>(
    target: &Signaller,
    exited: impl Future<Output = T>,
    grace: Duration,
) -> (T, HangUp) {
    let mut exited = std::pin::pin!(exited);
    if let Err(e) = target.signal(libc::SIGHUP) {
        tracing::warn!(pid = target.pid(), error = %e, "cannot send SIGHUP to the exec");
    }
    tokio::select! {
        out = &mut exited => return (out, HangUp::EndedOnHup),
        () = tokio::time::sleep(grace) => {}
    }
    tracing::warn!(
        pid = target.pid(),
        grace_s = grace.as_secs(),
        "the exec outlived SIGHUP: SIGKILL"
    );
    if let Err(e) = target.signal(libc::SIGKILL) {
        tracing::warn!(pid = target.pid(), error = %e, "cannot send SIGKILL to the exec");
    }
    (exited.await, HangUp::Killed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{DirectSpawner, Spawner};

    /// `sh -c SCRIPT`, once it has printed its first line (its traps are
    /// set by then: a signal before would meet the default action).
    fn spawn(script: &str) -> crate::reaper::Spawned {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script])
            .stdout(std::process::Stdio::piped());
        let mut child = DirectSpawner.spawn(cmd).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        child
    }

    #[tokio::test]
    async fn a_process_that_dies_of_sighup_needs_no_kill() {
        let child = spawn("echo ready; exec sleep 1000 >/dev/null");
        let s = Signaller::open(child.pid).unwrap();
        let start = std::time::Instant::now();
        let (exit, how) = hang_up(&s, child.exit, Duration::from_secs(10)).await;
        assert_eq!(how, HangUp::EndedOnHup);
        assert_eq!(exit.unwrap().signal, Some(libc::SIGHUP));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_process_that_ignores_sighup_is_killed_after_the_grace() {
        // Ignored dispositions survive exec: sleep itself ignores SIGHUP.
        let child = spawn("trap '' HUP; echo ready; exec sleep 1000 >/dev/null");
        let s = Signaller::open(child.pid).unwrap();
        let start = std::time::Instant::now();
        let grace = Duration::from_millis(500);
        let (exit, how) = hang_up(&s, child.exit, grace).await;
        assert_eq!(how, HangUp::Killed);
        assert_eq!(exit.unwrap().signal, Some(libc::SIGKILL));
        assert!(start.elapsed() >= grace);
        // The pidfd outlives the process: a late signal is a no-op.
        s.signal(libc::SIGKILL).unwrap();
    }
}
