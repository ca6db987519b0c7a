//! Signal forwarding and the stop sequence of the workspace.
//!
//! SIGTERM or SIGINT to cvmd asks the container to stop: the stop signal
//! (SIGRTMIN+3 for systemd, SIGTERM otherwise) goes to its init through
//! `runtime kill`, then after the grace period SIGKILL, and once the init
//! has exited `runtime delete --force` (always delete: docs/ARCHITECTURE.md, "The
//! sysbox-runc contract"). Every signal goes through `runtime kill` and,
//! when that fails or hangs, straight to the init through a pidfd (which is
//! all `runc kill` does): a stop never rests on the runtime's `kill`. After
//! SIGKILL the init has [`KILL_WAIT`] to go before cvmd deletes the
//! container and ends anyway. cvmd then exits with the container's status,
//! 128 + signal when a signal killed it, except that a system init ended by
//! its own halt/poweroff counts as 0 ([`exit_code`]). SIGHUP, SIGUSR1 and
//! SIGUSR2 are forwarded as they are.
//!
//! [`Stopper`] decides, as a pure state machine; [`supervise`] is the thin
//! loop that feeds it events and carries out its actions.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::runtime::{Runtime, RuntimeError};
use crate::supervisor::pidfd::Signaller;
use crate::supervisor::reaper::{Exit, ExitWaiter, ReaperError};

/// How long the init has to go after SIGKILL before cvmd deletes the
/// container (`delete --force` kills what is left of it) and ends: only a
/// process stuck in the kernel outlives SIGKILL that long.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long one `runtime kill` may take before the signal goes straight
/// to the init instead (the runtime's own timeout is far longer).
pub const KILL_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// systemd's stop request, SIGRTMIN+3 as the C library numbers it
/// (glibc's SIGRTMIN is 34); the runtime's `kill` takes it as a number.
pub const SIGRTMIN_PLUS_3: i32 = 37;

/// Signals that ask cvmd to stop the workspace.
pub const STOP_REQUESTS: [i32; 2] = [libc::SIGTERM, libc::SIGINT];
/// Not an OS signal (0 is never delivered): the control API's Restart,
/// which stops the container like SIGTERM but belongs to the container
/// running when it was asked. Kept apart so one that raced the
/// container's own exit can be told from an operator's stop and dropped
/// instead of stopping the next container ([`drain_before_restart`]).
pub const RESTART_REQUEST: i32 = 0;

/// Whether `signal` (from [`listen`] or the control API) asks for a stop.
pub fn is_stop_request(signal: i32) -> bool {
    STOP_REQUESTS.contains(&signal) || signal == RESTART_REQUEST
}

/// Before a restart boots the next container: empties the channel of what
/// was meant for the one that ended. A Restart that raced its exit is
/// dropped, and so are forwarded signals (no container to go to); an OS
/// stop request is returned, and then there is no restart.
pub fn drain_before_restart(signals: &mut mpsc::Receiver<i32>) -> Option<i32> {
    let mut stop = None;
    while let Ok(signal) = signals.try_recv() {
        if STOP_REQUESTS.contains(&signal) {
            stop = Some(signal);
        } else if signal == RESTART_REQUEST {
            tracing::info!("dropped a restart request that raced the workspace's own exit");
        }
    }
    stop
}

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
    /// SIGKILL went out; [`KILL_WAIT`] runs.
    Killing,
    /// The init exited; nothing more to do.
    Exited,
}

#[derive(Debug, Clone)]
pub struct Stopper {
    policy: StopPolicy,
    phase: Phase,
    /// Stopped before the workspace's program started ([`Stopper::on_stop_before_exec`]).
    unstarted: bool,
}

impl Stopper {
    pub fn new(policy: StopPolicy) -> Stopper {
        Stopper {
            policy,
            phase: Phase::Running,
            unstarted: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A signal arrived at cvmd.
    pub fn on_signal(&mut self, signal: i32) -> Vec<Action> {
        let stop = is_stop_request(signal);
        match (self.phase, stop) {
            (Phase::Running, true) => {
                self.phase = Phase::Stopping;
                vec![
                    Action::Kill(self.policy.stop_signal),
                    Action::StartGrace(self.policy.grace),
                ]
            }
            // A second request means the caller will not wait for the grace.
            (Phase::Stopping, true) => self.kill(),
            // Still there after SIGKILL: send it again (an earlier one may
            // not have arrived); the wait already runs.
            (Phase::Killing, true) => vec![Action::Kill(libc::SIGKILL)],
            (Phase::Running | Phase::Stopping | Phase::Killing, false) => {
                vec![Action::Kill(signal)]
            }
            (Phase::Exited, _) => Vec::new(),
        }
    }

    fn kill(&mut self) -> Vec<Action> {
        self.phase = Phase::Killing;
        vec![Action::Kill(libc::SIGKILL), Action::StartGrace(KILL_WAIT)]
    }

    /// The period armed by the last [`Action::StartGrace`] ran out: the
    /// grace (SIGKILL next), or [`KILL_WAIT`] (delete and end as killed,
    /// without waiting for an exit that does not come).
    pub fn on_grace_expired(&mut self) -> Vec<Action> {
        match self.phase {
            Phase::Stopping => self.kill(),
            Phase::Killing => {
                self.phase = Phase::Exited;
                vec![
                    Action::Delete,
                    Action::Exit(exit_code(Exit::signal(libc::SIGKILL), false)),
                ]
            }
            Phase::Running | Phase::Exited => Vec::new(),
        }
    }

    /// A stop request while the container's init is still the runtime's
    /// own, loading the image's program (which a lazily started image
    /// reads over the network, for seconds on a slow link): nothing of
    /// the workspace runs yet to be stopped gracefully, so the init is
    /// killed at once and its end counts as a clean stop. Sent the stop
    /// signal, runc's init (a Go program) would die of it with the Go
    /// runtime's status 2: as PID 1 of its namespace, re-raising the
    /// signal to itself does nothing, and Go then exits 2.
    pub fn on_stop_before_exec(&mut self, signal: i32) -> Vec<Action> {
        if self.phase != Phase::Running || !is_stop_request(signal) {
            return self.on_signal(signal);
        }
        self.unstarted = true;
        self.kill()
    }

    /// The container's init exited (whatever the phase: it may stop on its own).
    pub fn on_exit(&mut self, exit: Exit) -> Vec<Action> {
        if self.phase == Phase::Exited {
            return Vec::new();
        }
        self.phase = Phase::Exited;
        if self.unstarted {
            return vec![Action::Delete, Action::Exit(0)];
        }
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
    init_pid: i32,
    exit: ExitWaiter,
    policy: StopPolicy,
    signals: &mut mpsc::Receiver<i32>,
) -> Result<Outcome, ReaperError> {
    let mut stopper = Stopper::new(policy);
    // Opened before anything can reap the init (its exit is ours to take).
    let init = Signaller::open(init_pid)
        .map_err(|e| tracing::warn!(id, pid = init_pid, error = %e, "no pidfd for the container's init: signals rest on the runtime alone"))
        .ok();
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
                    if is_stop_request(signal)
                        && stopper.phase() == Phase::Running
                        && runtime_init_still(init_pid)
                    {
                        tracing::info!(id, "the workspace's init has not started yet (the runtime is still loading it): killing it; a clean stop");
                        stopper.on_stop_before_exec(signal)
                    } else {
                        stopper.on_signal(signal)
                    }
                }
                None => {
                    signals_open = false;
                    Vec::new()
                }
            },
            () = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => {
                grace = None;
                if stopper.phase() == Phase::Killing {
                    tracing::error!(id, wait_s = KILL_WAIT.as_secs(), "the container's init outlived SIGKILL; deleting the container and ending");
                } else {
                    tracing::warn!(id, "grace period over; killing the container");
                }
                stopper.on_grace_expired()
            }
        };
        for action in actions {
            match action {
                Action::Kill(signal) => send(runtime, id, init.as_ref(), signal).await,
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
                        // None: given up on after KILL_WAIT.
                        exit: exited.unwrap_or(Exit::signal(libc::SIGKILL)),
                        code,
                        deleted: deleted.take().unwrap_or(Ok(())),
                    });
                }
            }
        }
    }
}

/// Whether `comm` (a process's name) is that of runc's (or sysbox-runc's)
/// container init before it executes the container's program:
/// `runc:[2:INIT]`; exec gives the process the program's name.
pub fn is_runtime_init(comm: &str) -> bool {
    comm.trim_end().starts_with("runc:[")
}

/// Waits until the container's init has executed the workspace's program
/// (its name is no longer that of runc's init): true then, false if the
/// process went first. Under a lazy start runc's init reads the program
/// over FUSE after `runtime start` has returned, for seconds on a slow
/// link, and the workspace is not running until it has.
pub async fn program_started(pid: i32) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        match runtime_init(pid) {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Whether the process `pid` is still the runtime's container init (see
/// [`is_runtime_init`]); false when it cannot be told (gone already).
fn runtime_init_still(pid: i32) -> bool {
    runtime_init(pid) == Some(true)
}

/// Whether the process `pid` is the runtime's container init (see
/// [`is_runtime_init`]); None when it is gone.
fn runtime_init(pid: i32) -> Option<bool> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(is_runtime_init(&comm))
}

/// `runtime kill`, and the init's pidfd when that fails or hangs. The
/// init may have exited meanwhile: its exit comes next.
async fn send(runtime: &Runtime, id: &str, init: Option<&Signaller>, signal: i32) {
    let failure = match tokio::time::timeout(KILL_CALL_TIMEOUT, runtime.kill(id, signal)).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}s", KILL_CALL_TIMEOUT.as_secs()),
    };
    match init {
        Some(init) => match init.signal(signal) {
            Ok(()) => {
                tracing::warn!(id, signal, error = %failure, pid = init.pid(), "the runtime could not signal the container; signalled its init directly")
            }
            Err(e) => {
                tracing::error!(id, signal, error = %failure, direct = %e, "cannot signal the container, through the runtime or directly")
            }
        },
        None => tracing::error!(id, signal, error = %failure, "cannot signal the container"),
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
    fn a_stop_before_the_init_is_executed_kills_it_and_is_clean() {
        assert!(is_runtime_init("runc:[2:INIT]\n"));
        assert!(!is_runtime_init("sh\n") && !is_runtime_init("systemd") && !is_runtime_init(""));
        let mut s = Stopper::new(policy());
        assert_eq!(
            s.on_stop_before_exec(libc::SIGTERM),
            vec![Action::Kill(libc::SIGKILL), Action::StartGrace(KILL_WAIT)]
        );
        assert_eq!(s.phase(), Phase::Killing);
        // runc's init killed, or dead of the Go runtime's exit 2 on a
        // signal that raced the kill: either way, the workspace never ran.
        assert_eq!(
            s.on_exit(Exit::code(2)),
            vec![Action::Delete, Action::Exit(0)]
        );
        // Not a stop, or not running any more: as any signal.
        let mut s = Stopper::new(policy());
        assert_eq!(
            s.on_stop_before_exec(libc::SIGHUP),
            vec![Action::Kill(libc::SIGHUP)]
        );
        s.on_signal(libc::SIGTERM);
        assert_eq!(
            s.on_stop_before_exec(libc::SIGTERM),
            vec![Action::Kill(libc::SIGKILL), Action::StartGrace(KILL_WAIT)]
        );
        assert_eq!(
            s.on_exit(Exit::signal(libc::SIGKILL)),
            vec![Action::Delete, Action::Exit(137)]
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
        assert_eq!(
            s.on_grace_expired(),
            vec![Action::Kill(libc::SIGKILL), Action::StartGrace(KILL_WAIT)]
        );
        assert_eq!(s.phase(), Phase::Killing);
        // A further request sends SIGKILL again; the wait keeps running.
        assert_eq!(
            s.on_signal(libc::SIGTERM),
            vec![Action::Kill(libc::SIGKILL)]
        );
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
        assert_eq!(
            s.on_signal(libc::SIGINT),
            vec![Action::Kill(libc::SIGKILL), Action::StartGrace(KILL_WAIT)]
        );
        assert_eq!(s.phase(), Phase::Killing);
    }

    #[test]
    fn an_init_that_outlives_sigkill_is_deleted_and_the_stop_ends() {
        let mut s = Stopper::new(policy());
        s.on_signal(libc::SIGTERM);
        s.on_grace_expired();
        assert_eq!(
            s.on_grace_expired(),
            vec![Action::Delete, Action::Exit(137)],
            "after KILL_WAIT"
        );
        assert_eq!(s.phase(), Phase::Exited);
        // Its exit, should it come after all, changes nothing.
        assert!(s.on_exit(Exit::signal(libc::SIGKILL)).is_empty());
    }

    #[test]
    fn a_restart_request_stops_like_sigterm() {
        let mut s = Stopper::new(policy());
        assert_eq!(
            s.on_signal(RESTART_REQUEST),
            vec![
                Action::Kill(37),
                Action::StartGrace(Duration::from_secs(10))
            ]
        );
    }

    #[tokio::test]
    async fn a_restart_that_raced_the_exit_does_not_reach_the_next_container() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(RESTART_REQUEST).await.unwrap();
        tx.send(libc::SIGHUP).await.unwrap();
        assert_eq!(drain_before_restart(&mut rx), None);
        assert!(
            rx.try_recv().is_err(),
            "nothing left for the next container"
        );
        // An operator's SIGTERM in the same window wins over the restart.
        tx.send(RESTART_REQUEST).await.unwrap();
        tx.send(libc::SIGTERM).await.unwrap();
        assert_eq!(drain_before_restart(&mut rx), Some(libc::SIGTERM));
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

#[cfg(test)]
mod failing_runtime {
    //! The stop sequence against a stand-in runtime whose `kill` fails (the
    //! spawner seam lets the "runtime" be a script), with a real process as
    //! the container's init.
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::runtime::{DirectSpawner, Spawner};

    const SCRIPT: &str = "#!/bin/sh\ncase \" $* \" in *\" kill \"*) echo 'kill: container not found' >&2; exit 1 ;; esac\nexit 0\n";

    fn runtime(dir: &std::path::Path) -> Runtime {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("failing-kill-runc");
        std::fs::write(&bin, SCRIPT).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A fork elsewhere may hold the new script open for writing a moment
        // (ETXTBSY): wait until it runs.
        for _ in 0..100 {
            match std::process::Command::new(&bin).arg("probe").status() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break,
            }
        }
        Runtime::new(&bin, dir.join("logs"), Arc::new(DirectSpawner))
    }

    #[tokio::test]
    async fn a_stop_ends_within_the_grace_when_the_runtimes_kill_fails() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        // An init that ignores the stop signal, as many do.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "trap '' TERM; echo ready; exec sleep 1000 >/dev/null"])
            .stdout(std::process::Stdio::piped());
        let mut init = DirectSpawner.spawn(cmd).unwrap();
        // The trap is set once it speaks: SIGTERM before would end it.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(init.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "ready\n");
        // Whatever the outcome, the stand-in init does not outlive the test.
        struct KillOnDrop(Signaller);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.signal(libc::SIGKILL);
            }
        }
        let _guard = KillOnDrop(Signaller::open(init.pid).unwrap());
        let grace = Duration::from_millis(400);
        let policy = StopPolicy {
            stop_signal: libc::SIGTERM,
            grace,
            system_init: false,
        };
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(libc::SIGTERM).await.unwrap();
        let began = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            supervise(&rt, "ws1", init.pid, init.exit, policy, &mut rx),
        )
        .await
        .expect("the stop hung on the failing runtime kill")
        .unwrap();
        let took = began.elapsed();
        assert_eq!(outcome.exit, Exit::signal(libc::SIGKILL));
        assert_eq!(outcome.code, 137);
        assert!(took >= grace, "killed before the grace: {took:?}");
        assert!(took < grace + Duration::from_secs(3), "{took:?}");
        outcome.deleted.unwrap();
    }
}
