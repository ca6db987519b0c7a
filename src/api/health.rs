//! `grpc.health.v1` on the control socket, so standard checkers
//! (grpc_health_probe, grpcurl) can ask cvmd how the workspace is: the
//! overall status ("") and the Control service's follow the phase,
//! SERVING only while the workspace runs.

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::pb::control_server::ControlServer;
use super::service::ControlService;
use crate::supervisor::lifecycle::Phase;
use crate::supervisor::state::StateHandle;

/// The name checkers ask about besides "" (the whole server).
pub const CONTROL: &str = <ControlServer<ControlService> as tonic::server::NamedService>::NAME;

/// The serving status a phase maps to.
pub fn status_of(phase: Phase) -> ServingStatus {
    match phase {
        Phase::Running => ServingStatus::Serving,
        _ => ServingStatus::NotServing,
    }
}

async fn report(reporter: &HealthReporter, phase: Phase) {
    let status = status_of(phase);
    reporter.set_service_status("", status).await;
    reporter.set_service_status(CONTROL, status).await;
}

/// Keeps `reporter` in step with the workspace's phase until the state's
/// events end.
pub async fn follow(reporter: HealthReporter, state: StateHandle) {
    let (phase, mut events) = state.subscribe();
    report(&reporter, phase).await;
    loop {
        match events.recv().await {
            Ok(e) => report(&reporter, e.phase).await,
            // Missed events: the current phase is what counts.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                report(&reporter, state.phase()).await
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_only_while_running() {
        assert_eq!(CONTROL, "cvmd.v1.Control");
        assert_eq!(status_of(Phase::Running), ServingStatus::Serving);
        for p in [Phase::Pull, Phase::Stopping, Phase::Exited, Phase::Failed] {
            assert_eq!(status_of(p), ServingStatus::NotServing, "{p}");
        }
    }
}
