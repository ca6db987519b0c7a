//! The workspace's lifecycle as a pure state machine: which phase may follow
//! which, and the per-phase timeline. [`super::state::StateHandle`] wraps it
//! for the running supervisor and the control API.

use std::time::Duration;

/// Where `cvmd run` is. The image's download and unpack are one stream
/// (docs/ARCHITECTURE.md, "Hard parts": Streaming), so they are one phase, `pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Preflight,
    Pull,
    Rootfs,
    Bundle,
    Create,
    Network,
    Start,
    Running,
    Stopping,
    Exited,
    Failed,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Phase; 11] = [
        Phase::Preflight,
        Phase::Pull,
        Phase::Rootfs,
        Phase::Bundle,
        Phase::Create,
        Phase::Network,
        Phase::Start,
        Phase::Running,
        Phase::Stopping,
        Phase::Exited,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Pull => "pull",
            Phase::Rootfs => "rootfs",
            Phase::Bundle => "bundle",
            Phase::Create => "create",
            Phase::Network => "network",
            Phase::Start => "start",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Exited => "exited",
            Phase::Failed => "failed",
        }
    }

    /// Nothing follows these.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Exited | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `to` may follow `from`. The boot order is fixed; a stop may come
/// at any time before the end (a stop during the pull ends cvmd at once); the
/// workspace may end on its own while running; a restart goes from `stopping` back to `create`; any unfinished phase may
/// fail.
pub fn allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    if from.is_final() {
        return false;
    }
    matches!(
        (from, to),
        (Preflight, Pull)
            | (Pull, Rootfs)
            | (Rootfs, Bundle)
            | (Bundle, Create)
            | (Create, Network)
            | (Network, Start)
            | (Start, Running)
            // The program never ran: its exec failed, or it was stopped
            // while runc's init still loaded it.
            | (Start, Exited)
            | (Running, Exited)
            | (Stopping, Create)
            | (Stopping, Exited)
            | (_, Failed)
    ) || (to == Stopping && from != Stopping)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseTiming {
    pub phase: Phase,
    /// Since cvmd started.
    pub start: Duration,
    /// None while the phase runs.
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("workspace phase {to} cannot follow {from}")]
pub struct TransitionError {
    pub from: Phase,
    pub to: Phase,
}

/// The current phase and every phase's timing; time comes in as offsets
/// since cvmd started so tests need no clock.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    timeline: Vec<PhaseTiming>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            timeline: vec![PhaseTiming {
                phase: Phase::Preflight,
                start: Duration::ZERO,
                duration: None,
            }],
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        self.timeline.last().expect("never empty").phase
    }

    pub fn timeline(&self) -> &[PhaseTiming] {
        &self.timeline
    }

    /// Ends the current phase at `now` and starts `to`; a final phase has
    /// no duration to wait for, so it is closed at once.
    pub fn enter(&mut self, to: Phase, now: Duration) -> Result<(), TransitionError> {
        let from = self.phase();
        if !allowed(from, to) {
            return Err(TransitionError { from, to });
        }
        let last = self.timeline.last_mut().expect("never empty");
        last.duration = Some(now.saturating_sub(last.start));
        self.timeline.push(PhaseTiming {
            phase: to,
            start: now,
            duration: to.is_final().then_some(Duration::ZERO),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn boot_order_with_timeline() {
        let mut l = Lifecycle::default();
        for (i, p) in Phase::ALL[1..10].iter().copied().enumerate() {
            l.enter(p, ms(10 * (i as u64 + 1))).unwrap();
        }
        assert_eq!(l.phase(), Phase::Exited);
        let t = l.timeline();
        assert_eq!(t.len(), 10);
        assert_eq!(t[0].phase, Phase::Preflight);
        assert_eq!(t[0].duration, Some(ms(10)));
        assert_eq!(t[7].phase, Phase::Running);
        assert_eq!(t[7].start, ms(70));
        assert_eq!(t[7].duration, Some(ms(10)));
        assert_eq!(t[9].duration, Some(Duration::ZERO));
    }

    #[test]
    fn skipping_a_phase_is_refused_and_changes_nothing() {
        let mut l = Lifecycle::default();
        assert_eq!(
            l.enter(Phase::Running, ms(1)),
            Err(TransitionError {
                from: Phase::Preflight,
                to: Phase::Running
            })
        );
        assert_eq!(l.phase(), Phase::Preflight);
        assert_eq!(l.timeline().len(), 1);
        assert_eq!(l.timeline()[0].duration, None);
    }

    #[test]
    fn stop_during_the_pull_and_restart_after_running() {
        let mut l = Lifecycle::default();
        l.enter(Phase::Pull, ms(1)).unwrap();
        l.enter(Phase::Stopping, ms(2)).unwrap();
        assert!(l.enter(Phase::Stopping, ms(3)).is_err());
        l.enter(Phase::Exited, ms(3)).unwrap();

        assert!(allowed(Phase::Running, Phase::Stopping));
        assert!(allowed(Phase::Stopping, Phase::Create), "restart");
        assert!(!allowed(Phase::Running, Phase::Create));
    }

    #[test]
    fn final_phases_are_final() {
        for to in [Phase::Pull, Phase::Stopping, Phase::Failed, Phase::Exited] {
            assert!(!allowed(Phase::Exited, to));
            assert!(!allowed(Phase::Failed, to));
        }
        assert!(allowed(Phase::Create, Phase::Failed));
        assert!(allowed(Phase::Running, Phase::Exited), "ended on its own");
        assert!(
            allowed(Phase::Start, Phase::Exited),
            "its program never started"
        );
        assert!(
            !allowed(Phase::Pull, Phase::Exited),
            "only through stopping"
        );
    }
}
