//! The one handle on the workspace's state: `cvmd run` updates it at each
//! phase, the control API reads it, follows its events and pull progress,
//! and asks it to stop or restart the workspace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc};

use super::lifecycle::{Lifecycle, Phase, PhaseTiming};
use super::logbook::LogBook;
use crate::pull::{ProgressSink, PullEvent};
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Phase,
    Warning,
    Error,
    /// The workspace rebooted itself and boots again in place.
    Reboot,
    /// The kernel's OOM killer killed processes in the workspace.
    Oom,
    /// What a start did with the workspace's disk (an image change).
    Disk,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time: SystemTime,
    pub kind: EventKind,
    pub phase: Phase,
    pub message: String,
}

/// One layer of the pull as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerState {
    pub digest: String,
    pub done: u64,
    pub total: u64,
    /// waiting, downloading, retrying, done, cached.
    pub state: &'static str,
}

/// What Status reports, copied out under the lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub workspace: String,
    pub phase: Phase,
    pub timeline: Vec<PhaseTiming>,
    pub image_reference: String,
    pub image_digest: String,
    pub image_source: String,
    pub rootfs_mode: String,
    pub idmap_mode: String,
    pub runtime: String,
    pub init_pid: Option<i32>,
    pub uptime: Option<Duration>,
    pub exit_status: Option<i32>,
    pub last_error: Option<String>,
    pub boots: u32,
    /// Reboots from inside, each booted again in place.
    pub reboots: u32,
    /// OOM kills in the workspace's memory cgroup, over every boot.
    pub oom_kills: u64,
    pub preflight: Vec<crate::preflight::Check>,
    /// Where the disk is and what this start did with it.
    pub disk: String,
}

/// The running container, for Exec.
#[derive(Debug, Clone)]
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the workspace is {0}, not running: wait for `cvmctl status` to say running")]
    NotRunning(Phase),
    #[error("the workspace is already {0}")]
    AlreadyStopping(Phase),
}

#[derive(Debug)]
struct Inner {
    lifecycle: Lifecycle,
    image_reference: String,
    image_digest: String,
    image_source: String,
    rootfs_mode: String,
    idmap_mode: String,
    init_pid: Option<i32>,
    running_since: Option<Instant>,
    exit_status: Option<i32>,
    last_error: Option<String>,
    boots: u32,
    reboots: u32,
    oom_kills: u64,
    disk: String,
    container: Option<Container>,
    layers: BTreeMap<String, LayerState>,
    restart_requested: bool,
    preflight: Vec<crate::preflight::Check>,
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    workspace: String,
    runtime: String,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    progress: broadcast::Sender<LayerState>,
    /// Into the supervisor's signal channel: Stop and Restart take the same
    /// path as SIGTERM.
    stop: mpsc::Sender<i32>,
    logs: Arc<LogBook>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Cheap to clone; every clone is the same state.
#[derive(Debug, Clone)]
pub struct StateHandle(Arc<Shared>);

impl StateHandle {
    /// `stop` is the channel the supervisor reads signal numbers from.
    pub fn new(workspace: &str, runtime: &str, stop: mpsc::Sender<i32>) -> StateHandle {
        StateHandle(Arc::new(Shared {
            started: Instant::now(),
            workspace: workspace.to_string(),
            runtime: runtime.to_string(),
            inner: Mutex::new(Inner {
                lifecycle: Lifecycle::default(),
                image_reference: String::new(),
                image_digest: String::new(),
                image_source: String::new(),
                rootfs_mode: String::new(),
                idmap_mode: String::new(),
                init_pid: None,
                running_since: None,
                exit_status: None,
                last_error: None,
                boots: 0,
                reboots: 0,
                oom_kills: 0,
                disk: String::new(),
                container: None,
                layers: BTreeMap::new(),
                restart_requested: false,
                preflight: Vec::new(),
            }),
            events: broadcast::channel(256).0,
            progress: broadcast::channel(1024).0,
            stop,
            logs: LogBook::global(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn logs(&self) -> &Arc<LogBook> {
        &self.0.logs
    }

    /// What the Metrics call and the HTTP endpoint render.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.0.metrics
    }

    pub fn phase(&self) -> Phase {
        self.lock().lifecycle.phase()
    }

    /// Moves to `phase`; a transition the lifecycle refuses is a bug in the
    /// caller, logged and otherwise ignored rather than crashing PID 1.
    pub fn enter(&self, phase: Phase) {
        let mut inner = self.lock();
        self.enter_locked(&mut inner, phase);
    }

    /// Enters `to` if the phase is still `from`, in one step: a stop that
    /// came meanwhile is not undone. Whether it did.
    pub fn advance(&self, from: Phase, to: Phase) -> bool {
        let mut inner = self.lock();
        if inner.lifecycle.phase() != from {
            return false;
        }
        self.enter_locked(&mut inner, to);
        true
    }

    fn enter_locked(&self, inner: &mut Inner, phase: Phase) {
        let now = self.0.started.elapsed();
        if let Err(e) = inner.lifecycle.enter(phase, now) {
            tracing::warn!(error = %e, "ignoring a phase change");
            return;
        }
        let timeline = inner.lifecycle.timeline();
        let ended = timeline
            .iter()
            .rev()
            .nth(1)
            .map(|t| (t.phase, t.duration.unwrap_or_default()));
        self.0.metrics.phase_changed(ended, phase, now);
        if let Some(last) = inner.lifecycle.timeline().iter().rev().nth(1) {
            tracing::info!(
                phase = last.phase.as_str(),
                elapsed_ms = last.duration.unwrap_or_default().as_secs_f64() * 1e3,
                "phase done"
            );
        }
        match phase {
            Phase::Running => {
                inner.running_since = Some(Instant::now());
                inner.boots += 1;
                if inner.boots > 1 {
                    self.0.metrics.restarted();
                }
            }
            Phase::Stopping | Phase::Exited | Phase::Failed => inner.running_since = None,
            _ => {}
        }
        // Under the lock: subscribers see phases in order.
        let _ = self.0.events.send(Event {
            time: SystemTime::now(),
            kind: EventKind::Phase,
            phase,
            message: String::new(),
        });
    }

    /// A subscription to events after now, and the phase at that moment.
    pub fn subscribe(&self) -> (Phase, broadcast::Receiver<Event>) {
        let inner = self.lock();
        (inner.lifecycle.phase(), self.0.events.subscribe())
    }

    pub fn set_image(&self, reference: &str, digest: &str) {
        let mut inner = self.lock();
        inner.image_reference = reference.to_string();
        inner.image_digest = digest.to_string();
    }

    pub fn set_image_source(&self, source: &str) {
        self.lock().image_source = source.to_string();
    }

    /// The host checks cvmd ran at start.
    pub fn set_preflight(&self, checks: Vec<crate::preflight::Check>) {
        self.lock().preflight = checks;
    }

    /// What this start did with the disk; `event`: also a `disk` event
    /// and a log line (an image change).
    pub fn set_disk(&self, what: &str, event: bool) {
        let phase = {
            let mut inner = self.lock();
            inner.disk = what.to_string();
            inner.lifecycle.phase()
        };
        if event {
            tracing::warn!("the workspace's disk was made on another image: {what}");
            let _ = self.0.events.send(Event {
                time: SystemTime::now(),
                kind: EventKind::Disk,
                phase,
                message: what.to_string(),
            });
        }
    }

    /// A `disk` event and a warning, e.g. the disk is full.
    pub fn disk_event(&self, message: &str) {
        tracing::warn!("{message}");
        let _ = self.0.events.send(Event {
            time: SystemTime::now(),
            kind: EventKind::Disk,
            phase: self.phase(),
            message: message.to_string(),
        });
    }

    pub fn set_rootfs(&self, mode: &str, idmap_mode: &str) {
        let mut inner = self.lock();
        inner.rootfs_mode = mode.to_string();
        inner.idmap_mode = idmap_mode.to_string();
    }

    /// The container was created: its init and how to exec into it.
    pub fn set_container(&self, container: Container, init_pid: i32) {
        let mut inner = self.lock();
        inner.container = Some(container);
        inner.init_pid = Some(init_pid);
    }

    /// The container ended with `code` (as cvmd would exit).
    pub fn set_exited(&self, code: i32) {
        let mut inner = self.lock();
        inner.container = None;
        inner.init_pid = None;
        inner.exit_status = Some(code);
    }

    /// The workspace rebooted itself (reboot number `n`): a `reboot` event,
    /// and `stopping` until the next boot's `create`.
    pub fn rebooted(&self, n: u32) {
        let phase = {
            let mut inner = self.lock();
            inner.reboots = n;
            inner.lifecycle.phase()
        };
        let _ = self.0.events.send(Event {
            time: SystemTime::now(),
            kind: EventKind::Reboot,
            phase,
            message: format!(
                "the workspace rebooted itself (reboot {n}): booting it again on the same rootfs"
            ),
        });
        if phase != Phase::Stopping {
            self.enter(Phase::Stopping);
        }
    }

    /// `new` OOM kills in the workspace (`boot_total` in this boot): an
    /// `oom` event and a warning in the log.
    pub fn oom_killed(&self, new: u64, boot_total: u64) {
        let (phase, total) = {
            let mut inner = self.lock();
            inner.oom_kills += new;
            (inner.lifecycle.phase(), inner.oom_kills)
        };
        self.0.metrics.oom_killed(new);
        let message = format!(
            "the kernel's OOM killer killed {new} process(es) in the workspace: it reached its memory limit ({total} OOM kill(s) in all)"
        );
        tracing::warn!(new, boot_total, total, "{message}");
        let _ = self.0.events.send(Event {
            time: SystemTime::now(),
            kind: EventKind::Oom,
            phase,
            message,
        });
    }

    /// Records the error cvmd ends with, and moves to `failed`.
    pub fn fail(&self, error: &str) {
        self.lock().last_error = Some(error.to_string());
        let _ = self.0.events.send(Event {
            time: SystemTime::now(),
            kind: EventKind::Error,
            phase: self.phase(),
            message: error.to_string(),
        });
        self.enter(Phase::Failed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            workspace: self.0.workspace.clone(),
            phase: inner.lifecycle.phase(),
            timeline: inner.lifecycle.timeline().to_vec(),
            image_reference: inner.image_reference.clone(),
            image_digest: inner.image_digest.clone(),
            image_source: inner.image_source.clone(),
            rootfs_mode: inner.rootfs_mode.clone(),
            idmap_mode: inner.idmap_mode.clone(),
            runtime: self.0.runtime.clone(),
            init_pid: inner.init_pid,
            uptime: inner.running_since.map(|t| t.elapsed()),
            exit_status: inner.exit_status,
            last_error: inner.last_error.clone(),
            boots: inner.boots,
            reboots: inner.reboots,
            oom_kills: inner.oom_kills,
            preflight: inner.preflight.clone(),
            disk: inner.disk.clone(),
        }
    }

    /// The running container, or why there is none.
    pub fn container(&self) -> Result<Container, ControlError> {
        let inner = self.lock();
        match (&inner.container, inner.lifecycle.phase()) {
            (Some(c), Phase::Running) => Ok(c.clone()),
            (_, phase) => Err(ControlError::NotRunning(phase)),
        }
    }

    /// Asks the supervisor to stop, as SIGTERM does.
    pub async fn request_stop(&self) -> Result<(), ControlError> {
        let phase = self.phase();
        if phase.is_final() || phase == Phase::Stopping {
            return Err(ControlError::AlreadyStopping(phase));
        }
        self.enter(Phase::Stopping);
        let _ = self.0.stop.send(libc::SIGTERM).await;
        Ok(())
    }

    /// Asks the supervisor to stop the container and boot it again.
    pub async fn request_restart(&self) -> Result<(), ControlError> {
        {
            let mut inner = self.lock();
            let phase = inner.lifecycle.phase();
            if phase != Phase::Running {
                return Err(ControlError::NotRunning(phase));
            }
            inner.restart_requested = true;
        }
        self.enter(Phase::Stopping);
        let _ = self
            .0
            .stop
            .send(crate::supervisor::signals::RESTART_REQUEST)
            .await;
        Ok(())
    }

    /// Whether a restart was asked for and the container is not yet back.
    pub fn restart_pending(&self) -> bool {
        self.lock().restart_requested
    }

    /// Whether the stop that just ended was a restart; clears the request.
    pub fn take_restart(&self) -> bool {
        std::mem::take(&mut self.lock().restart_requested)
    }

    /// SIGTERM or SIGINT reached cvmd: the workspace is stopping, and a
    /// pending restart is cancelled (the operator's signal wins).
    pub fn stop_signalled(&self) {
        let phase = {
            let mut inner = self.lock();
            inner.restart_requested = false;
            inner.lifecycle.phase()
        };
        if !phase.is_final() && phase != Phase::Stopping {
            self.enter(Phase::Stopping);
        }
    }

    /// The layers seen so far, and a receiver for changes after them.
    pub fn pull_progress(&self) -> (Vec<LayerState>, broadcast::Receiver<LayerState>) {
        let inner = self.lock();
        (
            inner.layers.values().cloned().collect(),
            self.0.progress.subscribe(),
        )
    }

    fn layer(&self, digest: String, update: impl FnOnce(&mut LayerState)) {
        let mut inner = self.lock();
        let layer = inner
            .layers
            .entry(digest.clone())
            .or_insert_with(|| LayerState {
                digest,
                done: 0,
                total: 0,
                state: "waiting",
            });
        update(layer);
        let _ = self.0.progress.send(layer.clone());
    }
}

impl ProgressSink for StateHandle {
    fn event(&self, event: PullEvent) {
        self.0.metrics.pull_event(&event);
        match event {
            PullEvent::LayerWaiting { digest } => self.layer(digest.to_string(), |_| {}),
            PullEvent::LayerStarted {
                digest,
                size,
                resumed_from,
            } => self.layer(digest.to_string(), |l| {
                l.total = size;
                l.done = resumed_from;
                l.state = "downloading";
            }),
            PullEvent::LayerProgress {
                digest,
                done,
                total,
            } => self.layer(digest.to_string(), |l| {
                l.done = done;
                l.total = total;
                l.state = "downloading";
            }),
            PullEvent::LayerRetry { digest, .. } => {
                self.layer(digest.to_string(), |l| l.state = "retrying")
            }
            PullEvent::LayerDone {
                digest,
                size,
                cached,
            } => self.layer(digest.to_string(), |l| {
                l.done = size;
                l.total = size;
                l.state = if cached { "cached" } else { "done" };
            }),
            PullEvent::Resolved { .. } | PullEvent::Done { .. } => {}
        }
    }
}

/// Both sinks get every event: the API's and the log's.
pub struct Tee<'a>(pub &'a dyn ProgressSink, pub &'a dyn ProgressSink);

impl std::fmt::Debug for Tee<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tee")
    }
}

impl ProgressSink for Tee<'_> {
    fn event(&self, event: PullEvent) {
        self.0.event(event.clone());
        self.1.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn handle() -> (StateHandle, mpsc::Receiver<i32>) {
        let (tx, rx) = mpsc::channel(4);
        (StateHandle::new("ws", "runc", tx), rx)
    }

    #[test]
    fn phases_are_broadcast_in_order_with_uptime_only_while_running() {
        let (s, _rx) = handle();
        let (phase, mut events) = s.subscribe();
        assert_eq!(phase, Phase::Preflight);
        for p in &Phase::ALL[1..8] {
            s.enter(*p);
        }
        let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.phase)
            .collect();
        assert_eq!(seen.len(), 7);
        assert_eq!(seen[6], Phase::Running);
        let snap = s.snapshot();
        assert!(snap.uptime.is_some());
        assert_eq!(snap.boots, 1);
        assert_eq!(snap.timeline.len(), 8);
        s.enter(Phase::Stopping);
        assert!(s.snapshot().uptime.is_none());
    }

    #[test]
    fn refused_transition_changes_nothing() {
        let (s, _rx) = handle();
        s.enter(Phase::Running);
        assert_eq!(s.phase(), Phase::Preflight);
    }

    #[tokio::test]
    async fn stop_and_restart_go_through_the_signal_channel() {
        let (s, mut rx) = handle();
        assert_eq!(
            s.request_restart().await,
            Err(ControlError::NotRunning(Phase::Preflight))
        );
        s.request_stop().await.unwrap();
        assert_eq!(rx.recv().await, Some(libc::SIGTERM));
        assert!(!s.take_restart());
        for p in &Phase::ALL[1..8] {
            s.enter(*p);
        }
        s.request_restart().await.unwrap();
        assert_eq!(
            rx.recv().await,
            Some(crate::supervisor::signals::RESTART_REQUEST)
        );
        assert!(s.take_restart());
        assert!(!s.take_restart(), "taken once");
        s.enter(Phase::Stopping);
        assert_eq!(
            s.request_stop().await,
            Err(ControlError::AlreadyStopping(Phase::Stopping))
        );
    }

    #[test]
    fn pull_events_become_layer_states() {
        let (s, _rx) = handle();
        let d = Digest::of(b"layer");
        s.event(PullEvent::LayerStarted {
            digest: d.clone(),
            size: 10,
            resumed_from: 0,
        });
        let (_, mut rx) = s.pull_progress();
        s.event(PullEvent::LayerProgress {
            digest: d.clone(),
            done: 4,
            total: 10,
        });
        assert_eq!(rx.try_recv().unwrap().done, 4);
        s.event(PullEvent::LayerDone {
            digest: d.clone(),
            size: 10,
            cached: false,
        });
        let (layers, _) = s.pull_progress();
        assert_eq!(
            layers,
            vec![LayerState {
                digest: d.to_string(),
                done: 10,
                total: 10,
                state: "done"
            }]
        );
    }
}
