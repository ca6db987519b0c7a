//! Signal forwarding and the stop sequence of the workspace.
//!
//! SIGTERM or SIGINT to cvmd asks the container to stop: the stop signal
//! (SIGRTMIN+3 for systemd, SIGTERM otherwise) goes to its init through
//! `runtime kill`, then after the grace period SIGKILL, and once the init
//! has exited `runtime delete --force` (always delete: docs/ARCHITECTURE.md, "The
//! sysbox-runc contract"). cvmd then exits with the container's status,
//! 128 + signal when a signal killed it, except that a system init ended by
//! its own halt/poweroff counts as 0 ([`exit_code`]). SIGHUP, SIGUSR1 and
//! SIGUSR2 are forwarded as they are.
//!
//! [`Stopper`] decides, as a pure state machine; [`supervise`] is the thin
//! loop that feeds it events and carries out its actions.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::runtime::{Runtime, RuntimeError};
use crate::supervisor::reaper::{Exit, ExitWaiter, ReaperError};

/// systemd's stop request, SIGRTMIN+3 as the C library numbers it
/// (glibc's SIGRTMIN is 34); the runtime's `kill` takes it as a number.
pub const SIGRTMIN_PLUS_3: i32 = 37;

/// Signals that ask cvmd to stop the workspace.
pub const STOP_REQUESTS: [i32; 2] = [libc::SIGTERM, libc::SIGINT];
/// Signals passed on to the container's init unchanged.
pub const FORWARDED: [i32; 3] = [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPolicy {
    /// Sent first: [`SIGRTMIN_PLUS_3`] for systemd, else SIGTERM.
    pub stop_signal: i32,
    /// How long the container has to exit before SIGKILL.
    pub grace: Duration,
    /// The container's process is a system init (`/sbin/init`): see
    /// [`exit_code`].
    pub system_init: bool,
}

/// What cvmd exits with when the container's init ended with `exit`.
///
/// A system init that halts or powers off calls reboot(2); in a PID
/// namespace other than the host's the kernel does not stop the machine but
/// ends the namespace's init as if killed by SIGINT (SIGHUP for a restart):
/// pid_namespaces(7), `reboot_pid_ns` in kernel/pid_namespace.c. systemd
/// does exactly that on its stop signal SIGRTMIN+3 when it holds
/// CAP_SYS_BOOT, so "killed by SIGINT" is its clean shutdown: 0, as
/// systemd-nspawn reports it. A restart stays 129 (the code cvmd ends with
/// when `supervisor::reboot` does not boot it again), and for any other
/// process SIGINT keeps its shell meaning.
pub fn exit_code(exit: Exit, system_init: bool) -> i32 {
    if system_init && exit.signal == Some(libc::SIGINT) {
        return 0;
    }
    exit.as_shell_code()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `runtime kill ID SIGNAL`.
    Kill(i32),
    /// Report [`Stopper::on_grace_expired`] after this long.
    StartGrace(Duration),
    /// `runtime delete --force ID`.
    Delete,
    /// Exit cvmd with this code.
    Exit(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// The stop signal went out; the grace period runs.
    Stopping,
    /// SIGKILL went out.
    Killing,
    /// The init exited; nothing more to do.
    Exited,
}

#[derive(Debug, Clone)]
pub struct Stopper {
    policy: StopPolicy,
    phase: Phase,
}

impl Stopper {
    pub fn new(policy: StopPolicy) -> Stopper {
        Stopper {
            policy,
            phase: Phase::Running,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A signal arrived at cvmd.
    pub fn on_signal(&mut self, signal: i32) -> Vec<Action> {
        let stop = STOP_REQUESTS.contains(&signal);
        match (self.phase, stop) {
            (Phase::Running, true) => {
                self.phase = Phase::Stopping;
                vec![
                    Action::Kill(self.policy.stop_signal),
                    Action::StartGrace(self.policy.grace),
                ]
            }
            // A second request means the caller will not wait for the grace.
            (Phase::Stopping, true) => {
                self.phase = Phase::Killing;
                vec![Action::Kill(libc::SIGKILL)]
            }
            (Phase::Running | Phase::Stopping, false) => vec![Action::Kill(signal)],
            (Phase::Killing | Phase::Exited, _) => Vec::new(),
        }
    }

    /// The grace period armed by [`Action::StartGrace`] ran out.
    pub fn on_grace_expired(&mut self) -> Vec<Action> {
        if self.phase != Phase::Stopping {
            return Vec::new();
        }
        self.phase = Phase::Killing;
        vec![Action::Kill(libc::SIGKILL)]
    }

    /// The container's init exited (whatever the phase: it may stop on its own).
    pub fn on_exit(&mut self, exit: Exit) -> Vec<Action> {
        if self.phase == Phase::Exited {
            return Vec::new();
        }
        self.phase = Phase::Exited;
        vec![
            Action::Delete,
            Action::Exit(exit_code(exit, self.policy.system_init)),
        ]
    }
}

/// How the supervised container ended.
#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    /// What cvmd should exit with.
    pub code: i32,
    /// Whether the final `delete --force` worked.
    pub deleted: Result<(), RuntimeError>,
}

/// Listens for [`STOP_REQUESTS`] and [`FORWARDED`] signals and sends their
/// numbers on the returned channel. Needs a tokio runtime.
pub fn listen() -> std::io::Result<mpsc::Receiver<i32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(16);
    for signo in STOP_REQUESTS.into_iter().chain(FORWARDED) {
        let mut stream = signal(SignalKind::from_raw(signo))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(signo).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// Runs the container `id` (already started, its init awaited by `exit`)
/// until it has exited and been deleted, acting on the signals that arrive
/// on `signals` (see [`listen`]). Fails only if the init's exit cannot be
/// known.
pub async fn supervise(
    runtime: &Runtime,
    id: &str,
    exit: ExitWaiter,
    policy: StopPolicy,
    signals: &mut mpsc::Receiver<i32>,
) -> Result<Outcome, ReaperError> {
    let mut stopper = Stopper::new(policy);
    let mut exit = std::pin::pin!(exit);
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut signals_open = true;
    let mut exited = None;
    let mut deleted = None;
    loop {
        let actions = tokio::select! {
            status = &mut exit, if exited.is_none() => {
                let status = status?;
                tracing::info!(id, exit = %status, "container exited");
                exited = Some(status);
                stopper.on_exit(status)
            }
            signal = signals.recv(), if signals_open => match signal {
                Some(signal) => {
                    tracing::info!(id, signal, "signal received");
                    stopper.on_signal(signal)
                }
                None => {
                    signals_open = false;
                    Vec::new()
                }
            },
            () = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => {
                grace = None;
                tracing::warn!(id, "grace period over; killing the container");
                stopper.on_grace_expired()
            }
        };
        for action in actions {
            match action {
                Action::Kill(signal) => {
                    // The init may have exited meanwhile: its exit comes next.
                    if let Err(e) = runtime.kill(id, signal).await {
                        tracing::warn!(id, signal, error = %e, "cannot signal the container");
                    }
                }
                Action::StartGrace(d) => grace = Some(Box::pin(tokio::time::sleep(d))),
                Action::Delete => {
                    let result = runtime.delete(id, true).await;
                    if let Err(e) = &result {
                        tracing::error!(id, error = %e, "cannot delete the container");
                    }
                    deleted = Some(result);
                }
                Action::Exit(code) => {
                    return Ok(Outcome {
                        exit: exited.expect("the stopper exits only after the init did"),
                        code,
                        deleted: deleted.take().unwrap_or(Ok(())),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> StopPolicy {
        StopPolicy {
            stop_signal: SIGRTMIN_PLUS_3,
            grace: Duration::from_secs(10),
            system_init: true,
        }
    }

    #[test]
    fn a_system_inits_halt_is_a_clean_exit() {
        // reboot(2) with HALT/POWER_OFF in a PID namespace: init "killed by SIGINT".
        assert_eq!(exit_code(Exit::signal(libc::SIGINT), true), 0);
        // RESTART: SIGHUP; not a shutdown, keeps 128 + 1.
        assert_eq!(exit_code(Exit::signal(libc::SIGHUP), true), 129);
        assert_eq!(exit_code(Exit::signal(libc::SIGKILL), true), 137);
        assert_eq!(exit_code(Exit::code(3), true), 3);
        // An application killed by SIGINT keeps the shell's 130.
        assert_eq!(exit_code(Exit::signal(libc::SIGINT), false), 130);
        let mut s = Stopper::new(policy());
        s.on_signal(libc::SIGTERM);
        assert_eq!(
            s.on_exit(Exit::signal(libc::SIGINT)),
            vec![Action::Delete, Action::Exit(0)]
        );
    }

    #[test]
    fn term_then_grace_then_kill_then_delete() {
        let mut s = Stopper::new(policy());
        assert_eq!(
            s.on_signal(libc::SIGTERM),
            vec![
                Action::Kill(37),
                Action::StartGrace(Duration::from_secs(10))
            ]
        );
        assert_eq!(s.phase(), Phase::Stopping);
        assert_eq!(s.on_grace_expired(), vec![Action::Kill(libc::SIGKILL)]);
        assert_eq!(s.phase(), Phase::Killing);
        // Further requests change nothing while the kill takes effect.
        assert!(s.on_signal(libc::SIGTERM).is_empty());
        assert!(s.on_grace_expired().is_empty());
        assert_eq!(
            s.on_exit(Exit::signal(libc::SIGKILL)),
            vec![Action::Delete, Action::Exit(137)]
        );
        assert_eq!(s.phase(), Phase::Exited);
        assert!(s.on_exit(Exit::code(0)).is_empty());
        assert!(s.on_signal(libc::SIGINT).is_empty());
    }

    #[test]
    fn clean_stop_within_grace_keeps_the_containers_code() {
        let mut s = Stopper::new(policy());
        s.on_signal(libc::SIGINT);
        assert_eq!(
            s.on_exit(Exit::code(0)),
            vec![Action::Delete, Action::Exit(0)]
        );
        // A grace timer firing late does nothing.
        assert!(s.on_grace_expired().is_empty());
    }

    #[test]
    fn second_request_kills_at_once() {
        let mut s = Stopper::new(policy());
        s.on_signal(libc::SIGTERM);
        assert_eq!(s.on_signal(libc::SIGINT), vec![Action::Kill(libc::SIGKILL)]);
        assert_eq!(s.phase(), Phase::Killing);
    }

    #[test]
    fn other_signals_are_forwarded() {
        let mut s = Stopper::new(policy());
        assert_eq!(s.on_signal(libc::SIGHUP), vec![Action::Kill(libc::SIGHUP)]);
        assert_eq!(s.phase(), Phase::Running);
        s.on_signal(libc::SIGTERM);
        assert_eq!(
            s.on_signal(libc::SIGUSR1),
            vec![Action::Kill(libc::SIGUSR1)]
        );
    }

    #[test]
    fn exit_on_its_own() {
        let mut s = Stopper::new(policy());
        assert_eq!(
            s.on_exit(Exit::code(7)),
            vec![Action::Delete, Action::Exit(7)]
        );
        assert!(s.on_grace_expired().is_empty());
    }
}
