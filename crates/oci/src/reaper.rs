//! The one reaper of the process (docs/ARCHITECTURE.md, "Hard parts": One reaper).
//!
//! As PID 1 (or a child subreaper) cvmd inherits every orphan, including the
//! inner container's init once `runtime create` has exited. Any
//! `waitpid(-1)` steals exit statuses from whoever waits for a specific pid,
//! so exactly one loop reaps, and every process whose status matters
//! subscribes to it: [`Reaper::spawn`] registers the new pid under the same
//! lock the reap loop takes, so no status is ever reported before its
//! subscriber exists (containerd's runc shim: subscribe before spawn).
//! Processes created by someone else (the container init, from the runtime's
//! `--pid-file`) are watched with [`Reaper::watch`]; their status may already
//! have been collected, so statuses nobody asked for are kept for
//! [`UNCLAIMED_TTL`] before being logged as reaped orphans.
//!
//! Never use `tokio::process` or `std::process::Child::wait` in a process
//! that runs this reaper: their `waitpid(pid)` would find nothing (ECHILD)
//! once the reap loop has taken the status.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a status nobody subscribed for is kept for a late [`Reaper::watch`].
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// At most this many unclaimed statuses are kept; the oldest go first.
const UNCLAIMED_MAX: usize = 4096;
/// The loop also wakes this often to expire unclaimed statuses, and to reap
/// in case a wake-up was ever missed (signals coalesce; a reap pass is cheap).
const TICK: Duration = Duration::from_secs(1);

/// How a process ended: exactly one of `code` (it exited) and `signal` (a
/// signal killed it) is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Exit {
    pub fn code(code: i32) -> Exit {
        Exit {
            code: Some(code),
            signal: None,
        }
    }

    pub fn signal(signal: i32) -> Exit {
        Exit {
            code: None,
            signal: Some(signal),
        }
    }

    /// The status from a `wait` status word; `None` for stopped/continued.
    pub fn from_wait_status(status: i32) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The status a shell reports: the exit code, or 128 + the signal number.
    pub fn as_shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<std::process::ExitStatus> for Exit {
    fn from(status: std::process::ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::code(code),
            (None, Some(signal)) => Exit::signal(signal),
            (None, None) => Exit::from_wait_status(status.into_raw()).unwrap_or(Exit {
                code: None,
                signal: None,
            }),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {source}")]
    Subreaper {
        #[source]
        source: nix::Error,
    },
    #[error("cannot start the reaper thread: {source}")]
    Thread {
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for SIGCHLD: {source}")]
    Signal {
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "process {pid} is not a child of cvmd (pid {me}) and its exit was not seen; \
         cvmd must be PID 1 or a child subreaper to wait for the container's init"
    )]
    NotAChild { pid: i32, me: u32 },
    #[error("the reaper stopped before process {pid} exited")]
    Gone { pid: i32 },
    #[error("another subscriber already waits for process {pid}")]
    AlreadyWatched { pid: i32 },
}

/// Resolves to the exit status of one process.
#[derive(Debug)]
pub struct ExitWaiter {
    pid: i32,
    rx: oneshot::Receiver<Exit>,
}

impl ExitWaiter {
    /// A waiter fed by a channel: for [`crate::runtime::Spawner`]s other
    /// than the reaper (tests, tools that are not PID 1).
    pub fn channel(pid: i32) -> (oneshot::Sender<Exit>, ExitWaiter) {
        let (tx, rx) = oneshot::channel();
        (tx, ExitWaiter { pid, rx })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Future for ExitWaiter {
    type Output = Result<Exit, ReaperError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let pid = self.pid;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| ReaperError::Gone { pid }))
    }
}

/// A process started through a spawner: its pid, the pipe ends the
/// `Command` asked for, and its exit status to come.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub exit: ExitWaiter,
}

struct Unclaimed {
    exit: Exit,
    at: Instant,
}

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, Unclaimed>,
}

impl Table {
    /// Hands `exit` to the subscriber of `pid`, or keeps it for a late one.
    fn deliver(&mut self, pid: i32, exit: Exit, now: Instant) {
        if let Some(tx) = self.waiting.remove(&pid) {
            tracing::debug!(pid, %exit, "reaped");
            // A dropped receiver means nobody cares any more: fine.
            let _ = tx.send(exit);
            return;
        }
        if self.unclaimed.len() >= UNCLAIMED_MAX {
            if let Some(oldest) = self
                .unclaimed
                .iter()
                .min_by_key(|(_, u)| u.at)
                .map(|(p, _)| *p)
            {
                self.unclaimed.remove(&oldest);
            }
        }
        self.unclaimed.insert(pid, Unclaimed { exit, at: now });
    }

    fn expire(&mut self, now: Instant) {
        self.unclaimed.retain(|pid, u| {
            let keep = now.duration_since(u.at) < UNCLAIMED_TTL;
            if !keep {
                tracing::debug!(pid, exit = %u.exit, "reaped orphan");
            }
            keep
        });
    }
}

/// Handle on the process-wide reaper; clones share it.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reaper")
    }
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
static START: Mutex<()> = Mutex::new(());

impl Reaper {
    /// Starts the reaper of this process, or returns the one already running:
    /// two reap loops would steal statuses from each other.
    ///
    /// Makes the process a child subreaper, so orphans of our descendants
    /// (the container's init after `create` exits) become our children when
    /// we are not PID 1, as they would be when we are. The loop runs on its
    /// own thread with its own tokio runtime, so it outlives the caller's
    /// runtime (tests make one per test).
    pub fn start() -> Result<Reaper, ReaperError> {
        if let Some(r) = REAPER.get() {
            return Ok(r.clone());
        }
        let _once = START.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = REAPER.get() {
            return Ok(r.clone());
        }
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|source| ReaperError::Subreaper { source })?;
        let reaper = Reaper {
            table: Arc::new(Mutex::new(Table::default())),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let table = reaper.table.clone();
        std::thread::Builder::new()
            .name("cvmd-reaper".into())
            .spawn(move || reap_thread(table, ready_tx))
            .map_err(|source| ReaperError::Thread { source })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(ReaperError::Signal { source }),
            Err(_) => {
                return Err(ReaperError::Thread {
                    source: io::Error::other("the reaper thread ended at start"),
                })
            }
        }
        let _ = REAPER.set(reaper.clone());
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent even if a holder panicked: every
        // critical section is a single map operation.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and subscribes to its exit before the reap loop can see
    /// it: the loop reaps under the same lock that is held from fork to
    /// registration. The lock also covers std's own `waitpid(pid)` on a
    /// child whose exec failed, which would panic if the loop took it first.
    pub fn spawn(&self, mut cmd: Command) -> Result<Spawned, ReaperError> {
        let mut table = self.lock();
        let mut child = cmd.spawn().map_err(|source| ReaperError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id().cast_signed();
        // Under the lock the new process cannot have been reaped yet, so a
        // status kept for this pid belongs to an earlier process that had
        // the same number.
        table.unclaimed.remove(&pid);
        let (tx, exit) = ExitWaiter::channel(pid);
        table.waiting.insert(pid, tx);
        drop(table);
        Ok(Spawned {
            pid,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            exit,
        })
    }

    /// Waits for a process someone else started (the container's init).
    /// Its status may already have been collected (kept for
    /// [`UNCLAIMED_TTL`]); otherwise it must be our child now, which holds
    /// for the init once `create` has exited because we are a subreaper.
    pub fn watch(&self, pid: i32) -> Result<ExitWaiter, ReaperError> {
        let mut table = self.lock();
        let (tx, waiter) = ExitWaiter::channel(pid);
        if let Some(u) = table.unclaimed.remove(&pid) {
            let _ = tx.send(u.exit);
            return Ok(waiter);
        }
        if table.waiting.contains_key(&pid) {
            return Err(ReaperError::AlreadyWatched { pid });
        }
        // Reaping happens under this lock, so a child of ours that is not in
        // `unclaimed` is still in /proc (alive or a zombie).
        let me = std::process::id();
        if parent_of(pid) != Some(me.cast_signed()) {
            return Err(ReaperError::NotAChild { pid, me });
        }
        table.waiting.insert(pid, tx);
        Ok(waiter)
    }

    /// Pids whose exit was reaped but not (yet) claimed: for diagnostics.
    pub fn unclaimed(&self) -> Vec<(i32, Exit)> {
        self.lock()
            .unclaimed
            .iter()
            .map(|(pid, u)| (*pid, u.exit))
            .collect()
    }
}

pub(crate) use crate::proc_status::parent_of;

fn reap_thread(table: Arc<Mutex<Table>>, ready: std::sync::mpsc::Sender<io::Result<()>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        loop {
            // Children that exited before the handler was installed are
            // collected by this first pass.
            reap_all(&table);
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    });
}

/// Collects every exited child: `waitpid(-1, WNOHANG | __WALL)` until none
/// is left, under the table's lock (see [`Reaper::spawn`]).
fn reap_all(table: &Mutex<Table>) {
    let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid only writes the status word through the valid
        // pointer we pass; __WALL also collects clone children that do not
        // signal SIGCHLD on exit.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if pid > 0 {
            if let Some(exit) = Exit::from_wait_status(status) {
                table.deliver(pid, exit, now);
            }
            continue;
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: children remain, none exited; ECHILD: no children at all.
        break;
    }
    table.expire(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes() {
        assert_eq!(Exit::code(7).as_shell_code(), 7);
        assert_eq!(Exit::signal(9).as_shell_code(), 137);
        assert_eq!(Exit::signal(15).as_shell_code(), 143);
        assert!(Exit::code(0).success());
        assert!(!Exit::signal(9).success());
    }

    #[test]
    fn wait_status_words() {
        // Exited with 3: status 3 << 8. Killed by SIGKILL: 9. Stopped: 0x7f.
        assert_eq!(Exit::from_wait_status(3 << 8), Some(Exit::code(3)));
        assert_eq!(Exit::from_wait_status(9), Some(Exit::signal(9)));
        assert_eq!(Exit::from_wait_status((19 << 8) | 0x7f), None);
    }

    #[test]
    fn late_subscriber_and_expiry() {
        let mut t = Table::default();
        let t0 = Instant::now();
        t.deliver(42, Exit::code(1), t0);
        assert_eq!(t.unclaimed.get(&42).map(|u| u.exit), Some(Exit::code(1)));
        t.expire(t0 + UNCLAIMED_TTL / 2);
        assert!(t.unclaimed.contains_key(&42));
        t.expire(t0 + UNCLAIMED_TTL);
        assert!(t.unclaimed.is_empty());

        let (tx, mut rx) = oneshot::channel();
        t.waiting.insert(43, tx);
        t.deliver(43, Exit::signal(9), t0);
        assert_eq!(rx.try_recv().ok(), Some(Exit::signal(9)));
        assert!(t.waiting.is_empty() && t.unclaimed.is_empty());
    }

    #[test]
    fn parent_parses_odd_names() {
        assert_eq!(parent_of(std::process::id().cast_signed()), {
            Some(nix::unistd::getppid().as_raw())
        });
    }
}
