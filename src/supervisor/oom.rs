//! OOM kills inside the workspace, from its memory cgroup's own counter.
//!
//! The kernel counts every OOM kill in a memory cgroup: cgroup v2's
//! `memory.events` `oom_kill` (hierarchical: a kill anywhere below counts
//! at the workspace's level), cgroup v1's `memory.oom_control` `oom_kill`
//! (kernel 4.13+, counted only where the killed task was, so the v1 count
//! is the sum over the workspace's subtree). The memory controller is on
//! one of the two: on a hybrid host (v1 controllers, v2 `unified` for
//! systemd) it is v1's, so the workspace's `memory` line in
//! `/proc/PID/cgroup` decides, else its v2 line.
//!
//! cvmd polls the counter while the workspace runs and reads it once more
//! as soon as the container's init has exited, before `runtime delete`
//! removes the cgroup: a SIGKILL end of the init, with no stop asked for,
//! right after a new kill is the init dying of OOM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::launch::cgroups::{parse_mountinfo, placements, CgroupMount};
use crate::supervisor::reaper::{Exit, ExitWaiter};
use crate::supervisor::state::StateHandle;

/// How often the counter is read while the workspace runs.
pub const POLL: Duration = Duration::from_secs(1);
/// A v1 subtree walk stops here: a workspace with more cgroups than this
/// is counted in the first ones only (and says so in the log).
pub const MAX_V1_CGROUPS: usize = 4096;
/// How close to the init's SIGKILL end a new kill must be to be its cause.
pub const CAUSE_WINDOW: Duration = Duration::from_secs(3);

/// Where the workspace's memory cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub dir: PathBuf,
    pub v2: bool,
}

/// The `oom_kill N` line of `memory.events` (v2) or `memory.oom_control`
/// (v1); `oom_group_kill` is another key.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// The memory cgroup of a process from its `/proc/PID/cgroup` and the
/// cgroup mounts here: v1's `memory` hierarchy when the host has one,
/// else the v2 hierarchy.
pub fn memory_cgroup(proc_cgroup: &str, mounts: &[CgroupMount]) -> Option<MemoryCgroup> {
    let placed = placements(proc_cgroup, mounts);
    let v1 = placed
        .iter()
        .find(|(m, _)| !m.v2 && m.controllers.iter().any(|c| c == "memory"));
    let (mount, dir) = v1.or_else(|| placed.iter().find(|(m, _)| m.v2))?;
    Some(MemoryCgroup {
        dir: dir.clone(),
        v2: mount.v2,
    })
}

/// The workspace's OOM kills so far; None when the counter cannot be read
/// (no memory controller there, a kernel before 4.13, the cgroup gone).
pub fn read_count(cg: &MemoryCgroup) -> Option<u64> {
    if cg.v2 {
        return parse_oom_kill(&std::fs::read_to_string(cg.dir.join("memory.events")).ok()?);
    }
    let mut total =
        parse_oom_kill(&std::fs::read_to_string(cg.dir.join("memory.oom_control")).ok()?)?;
    let mut todo = vec![cg.dir.clone()];
    let mut seen = 0usize;
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            // Cgroup directories are real directories; nothing links.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            seen += 1;
            if seen > MAX_V1_CGROUPS {
                tracing::debug!(dir = %cg.dir.display(), "more than {MAX_V1_CGROUPS} memory cgroups: OOM kills counted in the first ones");
                return Some(total);
            }
            let child = e.path();
            if let Some(n) = std::fs::read_to_string(child.join("memory.oom_control"))
                .ok()
                .and_then(|t| parse_oom_kill(&t))
            {
                total += n;
            }
            todo.push(child);
        }
    }
    Some(total)
}

/// What the samples have shown: kills since the container started, and
/// when the last new one was seen. Time comes in as instants the caller
/// takes, so tests choose them.
#[derive(Debug, Clone, Default)]
pub struct OomTracker {
    last: Option<u64>,
    kills: u64,
    last_new: Option<Instant>,
}

impl OomTracker {
    /// A sample of the counter at `now`; returns how many kills are new.
    /// The first sample is the base (a reused cgroup's old kills are not
    /// this container's); a counter that went down (a v1 child cgroup
    /// removed with its count) is the base from then on.
    pub fn observe(&mut self, count: u64, now: Instant) -> u64 {
        let last = self.last.replace(count);
        let new = match last {
            Some(last) => count.saturating_sub(last),
            None => 0,
        };
        if new > 0 {
            self.kills += new;
            self.last_new = Some(now);
        }
        new
    }

    pub fn kills(&self) -> u64 {
        self.kills
    }

    /// Whether the init's `exit` at `at` was the OOM killer's: SIGKILL,
    /// not one cvmd sent (`own_end`), with a new kill counted within
    /// [`CAUSE_WINDOW`] before.
    pub fn killed_init(&self, exit: Exit, own_end: bool, at: Instant) -> bool {
        own_end
            && exit.signal == Some(libc::SIGKILL)
            && self
                .last_new
                .is_some_and(|t| at.saturating_duration_since(t) <= CAUSE_WINDOW)
    }
}

/// The OOM watch of one container.
#[derive(Debug, Clone, Default)]
pub struct OomWatch {
    tracker: Arc<Mutex<OomTracker>>,
    exited_at: Arc<Mutex<Option<Instant>>>,
}

impl OomWatch {
    /// See [`OomTracker::killed_init`].
    pub fn killed_init(&self, exit: Exit, own_end: bool) -> bool {
        let at = self
            .exited_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(Instant::now);
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .killed_init(exit, own_end, at)
    }
}

fn sample(cg: &MemoryCgroup, watch: &OomWatch, state: &StateHandle) {
    let Some(count) = read_count(cg) else {
        return;
    };
    let (new, kills) = {
        let mut t = watch.tracker.lock().unwrap_or_else(|e| e.into_inner());
        (t.observe(count, Instant::now()), t.kills())
    };
    if new > 0 {
        state.oom_killed(new, kills);
    }
}

/// Starts counting the OOM kills of the container whose init is `pid`
/// (created, its cgroup made) and returns the exit waiter to supervise
/// with instead of `exit`: it resolves once the counter has been read a
/// last time after the init's exit.
pub fn watch(pid: i32, exit: ExitWaiter, state: &StateHandle) -> (ExitWaiter, OomWatch) {
    let watch = OomWatch::default();
    let Some(cg) = locate(pid) else {
        tracing::warn!(
            pid,
            "no memory cgroup found for the workspace: OOM kills are not counted"
        );
        return (exit, watch);
    };
    tracing::info!(dir = %cg.dir.display(), v2 = cg.v2, "counting the workspace's OOM kills");
    sample(&cg, &watch, state);
    let poller = {
        let (cg, watch, state) = (cg.clone(), watch.clone(), state.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                sample(&cg, &watch, &state);
            }
        })
    };
    let (tx, waiter) = ExitWaiter::channel(pid);
    {
        let (watch, state) = (watch.clone(), state.clone());
        tokio::spawn(async move {
            let status = exit.await;
            *watch.exited_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            poller.abort();
            sample(&cg, &watch, &state);
            // An error drops `tx`: the waiter reports the init as gone.
            if let Ok(status) = status {
                let _ = tx.send(status);
            }
        });
    }
    (waiter, watch)
}

fn locate(pid: i32) -> Option<MemoryCgroup> {
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
    let cg = memory_cgroup(
        &std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
        &mounts,
    )?;
    let file = if cg.v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    Path::new(&cg.dir).join(file).exists().then_some(cg)
}

/// The line cvmd ends with when the init died of OOM.
pub fn init_killed_message(kills: u64, limit: Option<u64>) -> String {
    let limit = match limit {
        Some(b) => format!("its memory limit of {} MiB", b >> 20),
        None => "its memory limit".to_string(),
    };
    format!(
        "the workspace's init was killed by the kernel's OOM killer: the workspace reached {limit} ({kills} OOM kill(s) in all); raise CVMD_MEMORY (or the pod's memory limit), or find what grew with `cvmctl logs`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
    const V2: &str = "31 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn the_oom_kill_line() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(parse_oom_kill(v1), Some(5));
        // A kernel before 4.13: no counter.
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn memory_is_on_v1_on_a_hybrid_host() {
        let mounts = parse_mountinfo(HYBRID);
        let cg = memory_cgroup(
            "5:memory:/pod/ws\n4:cpu,cpuacct:/pod/ws\n0::/pod/ws\n",
            &mounts,
        );
        assert_eq!(
            cg,
            Some(MemoryCgroup {
                dir: "/sys/fs/cgroup/memory/pod/ws".into(),
                v2: false
            })
        );
        let mounts = parse_mountinfo(V2);
        assert_eq!(
            memory_cgroup("0::/kubepods/ws\n", &mounts),
            Some(MemoryCgroup {
                dir: "/sys/fs/cgroup/kubepods/ws".into(),
                v2: true
            })
        );
        assert_eq!(memory_cgroup("", &mounts), None);
    }

    #[test]
    fn v1_counts_the_whole_subtree() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("memory.oom_control"), "oom_kill 1\n").unwrap();
        std::fs::create_dir_all(d.join("init.scope")).unwrap();
        std::fs::write(d.join("init.scope/memory.oom_control"), "oom_kill 2\n").unwrap();
        std::fs::create_dir_all(d.join("system.slice/a.service")).unwrap();
        std::fs::write(
            d.join("system.slice/a.service/memory.oom_control"),
            "under_oom 0\noom_kill 4\n",
        )
        .unwrap();
        let cg = MemoryCgroup {
            dir: d.to_path_buf(),
            v2: false,
        };
        assert_eq!(read_count(&cg), Some(7));
        std::fs::write(d.join("memory.events"), "oom 9\noom_kill 3\n").unwrap();
        let cg = MemoryCgroup {
            dir: d.to_path_buf(),
            v2: true,
        };
        assert_eq!(read_count(&cg), Some(3), "v2 is hierarchical already");
    }

    #[test]
    fn new_kills_since_the_first_sample() {
        let t0 = Instant::now();
        let mut t = OomTracker::default();
        assert_eq!(t.observe(4, t0), 0, "old kills of a reused cgroup");
        assert_eq!(t.observe(4, t0), 0);
        assert_eq!(t.observe(6, t0), 2);
        assert_eq!(t.kills(), 2);
        // A v1 child cgroup went away with its count: a new base.
        assert_eq!(t.observe(1, t0), 0);
        assert_eq!(t.observe(2, t0), 1);
        assert_eq!(t.kills(), 3);
    }

    #[test]
    fn the_init_died_of_oom_only_right_after_a_kill() {
        let t0 = Instant::now();
        let mut t = OomTracker::default();
        t.observe(0, t0);
        let kill = Exit::signal(libc::SIGKILL);
        assert!(!t.killed_init(kill, true, t0), "no kill seen");
        t.observe(1, t0);
        assert!(t.killed_init(kill, true, t0 + Duration::from_secs(1)));
        assert!(!t.killed_init(kill, false, t0), "cvmd's own SIGKILL");
        assert!(!t.killed_init(Exit::code(1), true, t0));
        assert!(!t.killed_init(kill, true, t0 + CAUSE_WINDOW + Duration::from_secs(1)));
        let m = init_killed_message(1, Some(32 << 20));
        assert!(m.contains("OOM killer") && m.contains("32 MiB"), "{m}");
    }
}
