//! The Control service: each call reads or steers the [`StateHandle`].

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::pb;
use crate::supervisor::lifecycle::Phase;
use crate::supervisor::logbook::{Filter, LogLine, Source, KEPT_LINES};
use crate::supervisor::state::{ControlError, Event, EventKind, LayerState, Snapshot, StateHandle};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug)]
pub struct ControlService {
    pub state: StateHandle,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn epoch_ms(t: SystemTime) -> u64 {
    ms(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

pub fn status_of(s: &Snapshot) -> pb::StatusResponse {
    pb::StatusResponse {
        phase: s.phase.to_string(),
        timeline: s
            .timeline
            .iter()
            .map(|t| pb::PhaseTiming {
                name: t.phase.to_string(),
                start_offset_ms: ms(t.start),
                duration_ms: t.duration.map(ms).unwrap_or(0),
            })
            .collect(),
        image_reference: s.image_reference.clone(),
        image_digest: s.image_digest.clone(),
        image_source: s.image_source.clone(),
        rootfs_mode: s.rootfs_mode.clone(),
        idmap_mode: s.idmap_mode.clone(),
        runtime: s.runtime.clone(),
        init_pid: s.init_pid.unwrap_or(0),
        uptime_ms: s.uptime.map(ms).unwrap_or(0),
        has_exit_status: s.exit_status.is_some(),
        exit_status: s.exit_status.unwrap_or(0),
        last_error: s.last_error.clone().unwrap_or_default(),
        preflight: s.preflight.iter().map(check_of).collect(),
        workspace: s.workspace.clone(),
        boots: s.boots,
        reboots: s.reboots,
        oom_kills: s.oom_kills,
        disk: s.disk.clone(),
    }
}

fn check_of(c: &crate::preflight::Check) -> pb::Check {
    use crate::preflight::Status;
    pb::Check {
        name: c.name.clone(),
        status: match c.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
        .into(),
        detail: c.detail.clone(),
        fix: c.fix.clone().unwrap_or_default(),
    }
}

fn event_of(e: &Event) -> pb::Event {
    pb::Event {
        time_ms: epoch_ms(e.time),
        kind: match e.kind {
            EventKind::Phase => "phase",
            EventKind::Warning => "warning",
            EventKind::Error => "error",
            EventKind::Reboot => "reboot",
            EventKind::Oom => "oom",
            EventKind::Disk => "disk",
        }
        .into(),
        phase: e.phase.to_string(),
        message: e.message.clone(),
    }
}

fn line_of(l: &LogLine) -> pb::LogLine {
    pb::LogLine {
        time_ms: epoch_ms(l.time),
        source: l.source.as_str().into(),
        line: l.line.clone(),
    }
}

fn layer_of(l: &LayerState) -> pb::LayerProgress {
    pb::LayerProgress {
        digest: l.digest.clone(),
        done: l.done,
        total: l.total,
        state: l.state.into(),
    }
}

fn control_status(e: ControlError) -> Status {
    Status::failed_precondition(e.to_string())
}

/// A bounded channel whose receiver is the response stream; a producer
/// task ends when the client goes away (send fails).
fn channel<T: Send + 'static>() -> (mpsc::Sender<Result<T, Status>>, Stream_<T>) {
    let (tx, rx) = mpsc::channel(64);
    (tx, Box::pin(ReceiverStream::new(rx)))
}

/// The next item of a broadcast, skipping over what a slow reader missed.
async fn next<T: Clone>(rx: &mut broadcast::Receiver<T>) -> Option<T> {
    loop {
        match rx.recv().await {
            Ok(v) => return Some(v),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status_of(&self.state.snapshot())))
    }

    type EventsStream = Stream_<pb::Event>;

    /// The current phase first, then every change and cvmd's warnings and
    /// errors; ends after a final phase.
    async fn events(
        &self,
        _: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let (phase, mut events) = self.state.subscribe();
        let mut logs = self.state.logs().subscribe();
        let (tx, stream) = channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            let first = Event {
                time: SystemTime::now(),
                kind: EventKind::Phase,
                phase,
                message: String::new(),
            };
            if tx.send(Ok(event_of(&first))).await.is_err() || phase.is_final() {
                return;
            }
            loop {
                let event = tokio::select! {
                    e = next(&mut events) => match e { Some(e) => e, None => return },
                    l = next(&mut logs) => match l {
                        Some(l) if l.source == Source::Cvmd && l.level <= tracing::Level::WARN => Event {
                            time: l.time,
                            kind: if l.level == tracing::Level::ERROR { EventKind::Error } else { EventKind::Warning },
                            phase: state.phase(),
                            message: l.line,
                        },
                        Some(_) => continue,
                        None => return,
                    },
                };
                let end = event.kind == EventKind::Phase && event.phase.is_final();
                if tx.send(Ok(event_of(&event))).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    type PullProgressStream = Stream_<pb::LayerProgress>;

    /// Every layer seen so far, then changes until the pull is over.
    async fn pull_progress(
        &self,
        _: Request<pb::PullProgressRequest>,
    ) -> Result<Response<Self::PullProgressStream>, Status> {
        let (_, mut events) = self.state.subscribe();
        let (layers, mut progress) = self.state.pull_progress();
        let (tx, stream) = channel();
        let pulling = |p: Phase| matches!(p, Phase::Preflight | Phase::Pull);
        let still_pulling = pulling(self.state.phase());
        tokio::spawn(async move {
            for l in &layers {
                if tx.send(Ok(layer_of(l))).await.is_err() {
                    return;
                }
            }
            if !still_pulling {
                return;
            }
            loop {
                tokio::select! {
                    l = next(&mut progress) => match l {
                        Some(l) => if tx.send(Ok(layer_of(&l))).await.is_err() { return },
                        None => return,
                    },
                    e = next(&mut events) => match e {
                        Some(e) if pulling(e.phase) => {}
                        _ => return,
                    },
                }
            }
        });
        Ok(Response::new(stream))
    }

    type LogsStream = Stream_<pb::LogLine>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let filter = Filter::parse(&req.source).ok_or_else(|| {
            Status::invalid_argument(format!(
                "log source {:?} is not one of workspace, cvmd, all",
                req.source.chars().take(64).collect::<String>()
            ))
        })?;
        let n = (req.tail as usize).min(2 * KEPT_LINES);
        let (tail, mut rx) = self.state.logs().tail_and_follow(filter, n);
        let (tx, stream) = channel();
        tokio::spawn(async move {
            for l in &tail {
                if tx.send(Ok(line_of(l))).await.is_err() {
                    return;
                }
            }
            if !req.follow {
                return;
            }
            loop {
                let line = match rx.recv().await {
                    Ok(l) if filter.wants(l.source) => line_of(&l),
                    Ok(_) => continue,
                    // Say so rather than leave a silent hole in the log.
                    Err(broadcast::error::RecvError::Lagged(n)) => pb::LogLine {
                        time_ms: epoch_ms(SystemTime::now()),
                        source: Source::Cvmd.as_str().into(),
                        line: format!("({n} lines skipped: this reader fell behind)"),
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    type ExecStream = Stream_<pb::ExecResponse>;

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        super::exec_call::exec(&self.state, request.into_inner()).await
    }

    async fn stop(
        &self,
        _: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        tracing::info!("stop requested through the control API");
        self.state.request_stop().await.map_err(control_status)?;
        Ok(Response::new(pb::StopResponse {}))
    }

    async fn metrics(
        &self,
        _: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let metrics = self.state.metrics().clone();
        // Measuring the cache reads the disk.
        let text = tokio::task::spawn_blocking(move || metrics.render())
            .await
            .map_err(|e| Status::internal(format!("rendering metrics: {e}")))?;
        Ok(Response::new(pb::MetricsResponse { text }))
    }

    async fn restart(
        &self,
        _: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RestartResponse>, Status> {
        tracing::info!("restart requested through the control API");
        self.state.request_restart().await.map_err(control_status)?;
        Ok(Response::new(pb::RestartResponse {}))
    }
}
