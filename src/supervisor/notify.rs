//! Telling systemd (Type=notify, systemd/cvmd@.service) how the workspace
//! is: STATUS= at every phase, READY=1 once it runs, STOPPING=1 when it
//! stops for good. Outside systemd (no NOTIFY_SOCKET) nothing is sent.

use sd_notify::NotifyState;

use super::lifecycle::Phase;
use super::state::StateHandle;

/// The STATUS= text for `phase`. `restarting`: the stop is `cvmctl
/// restart`'s, and the service goes on.
pub fn status_of(phase: Phase, restarting: bool) -> String {
    match phase {
        Phase::Running => "workspace running".to_string(),
        Phase::Stopping if restarting => "restarting the workspace".to_string(),
        Phase::Exited => "workspace exited".to_string(),
        Phase::Failed => "workspace failed: see the journal".to_string(),
        p => format!("phase: {p}"),
    }
}

/// The state change beside the status, if `phase` is one.
pub fn change_of(phase: Phase, restarting: bool) -> Option<NotifyState<'static>> {
    match phase {
        Phase::Running => Some(NotifyState::Ready),
        Phase::Stopping if !restarting => Some(NotifyState::Stopping),
        _ => None,
    }
}

/// The datagram's lines for `phase`, in the order they are sent.
pub fn messages(phase: Phase, restarting: bool) -> Vec<String> {
    let status = status_of(phase, restarting);
    std::iter::once(NotifyState::Status(&status).to_string())
        .chain(change_of(phase, restarting).map(|c| c.to_string()))
        .collect()
}

fn send(phase: Phase, restarting: bool) {
    let status = status_of(phase, restarting);
    let mut states = vec![NotifyState::Status(&status)];
    states.extend(change_of(phase, restarting));
    if let Err(e) = sd_notify::notify(&states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Follows the workspace's phases and tells systemd, until cvmd ends.
pub async fn follow(state: StateHandle) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let (phase, mut events) = state.subscribe();
    send(phase, false);
    loop {
        use tokio::sync::broadcast::error::RecvError;
        let phase = match events.recv().await {
            Ok(e) if e.kind == super::state::EventKind::Phase => e.phase,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => state.phase(),
            Err(RecvError::Closed) => return,
        };
        send(phase, state.restart_pending());
        if phase.is_final() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_running_stopping_only_for_good() {
        assert_eq!(messages(Phase::Pull, false), ["STATUS=phase: pull"]);
        assert_eq!(
            messages(Phase::Running, false),
            ["STATUS=workspace running", "READY=1"]
        );
        assert_eq!(
            messages(Phase::Stopping, false),
            ["STATUS=phase: stopping", "STOPPING=1"]
        );
        assert_eq!(
            messages(Phase::Stopping, true),
            ["STATUS=restarting the workspace"]
        );
        assert_eq!(messages(Phase::Exited, false), ["STATUS=workspace exited"]);
    }
}
