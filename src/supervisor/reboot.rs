//! A reboot from inside the workspace boots it again in place, within a
//! bound.
//!
//! reboot(2) in a PID namespace other than the host's does not restart the
//! machine: the kernel ends the namespace's init as if killed by SIGHUP for
//! a restart, SIGINT for a halt or power-off (pid_namespaces(7),
//! `reboot_pid_ns` in kernel/pid_namespace.c). So a system init that died
//! of SIGHUP (and no stop was asked for) rebooted: cvmd creates a new
//! container on the same rootfs, bundle and network settings instead of
//! exiting 129 and having Kubernetes recreate the pod. A workspace that
//! reboots over and over is stopped at [`RebootPolicy::max`] reboots within
//! [`RebootPolicy::window`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::supervisor::reaper::Exit;

/// Whether the init's end was its own reboot(2) (RB_AUTOBOOT).
pub fn is_reboot(exit: Exit, system_init: bool) -> bool {
    system_init && exit.signal == Some(libc::SIGHUP)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebootPolicy {
    /// Reboots allowed within `window`; 0 turns in-place reboots off (a
    /// reboot ends cvmd with 129, as a SIGHUP death).
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the workspace rebooted {count} times within {}s (CVMD_MAX_REBOOTS={max} per CVMD_REBOOT_WINDOW): not booting it again; see its log (`cvmctl logs`) for why it reboots, or raise CVMD_MAX_REBOOTS",
    window.as_secs()
)]
pub struct RebootLoop {
    pub count: u32,
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boot again; this is reboot number `n` since cvmd started.
    Reboot { n: u32 },
    /// In-place reboots are off: end as the init did.
    Exit,
    /// Past the bound.
    Loop(RebootLoop),
}

/// Counts reboots; time comes in as offsets so tests need no clock.
#[derive(Debug, Clone)]
pub struct RebootBudget {
    policy: RebootPolicy,
    recent: VecDeque<Duration>,
    total: u32,
}

impl RebootBudget {
    pub fn new(policy: RebootPolicy) -> RebootBudget {
        RebootBudget {
            policy,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// The workspace rebooted at `now`: boot it again or not.
    pub fn on_reboot(&mut self, now: Duration) -> Decision {
        if self.policy.max == 0 {
            return Decision::Exit;
        }
        while let Some(&t) = self.recent.front() {
            if now.saturating_sub(t) >= self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        let count = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if count > self.policy.max {
            return Decision::Loop(RebootLoop {
                count,
                max: self.policy.max,
                window: self.policy.window,
            });
        }
        self.total += 1;
        Decision::Reboot { n: self.total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn only_a_system_inits_sighup_is_a_reboot() {
        assert!(is_reboot(Exit::signal(libc::SIGHUP), true));
        // Halt and power-off: SIGINT, the end of the workspace.
        assert!(!is_reboot(Exit::signal(libc::SIGINT), true));
        assert!(!is_reboot(Exit::signal(libc::SIGKILL), true));
        assert!(!is_reboot(Exit::code(0), true));
        // An application killed by SIGHUP did not reboot anything.
        assert!(!is_reboot(Exit::signal(libc::SIGHUP), false));
    }

    #[test]
    fn bounded_within_the_window() {
        let mut b = RebootBudget::new(RebootPolicy {
            max: 2,
            window: s(60),
        });
        assert_eq!(b.on_reboot(s(0)), Decision::Reboot { n: 1 });
        assert_eq!(b.on_reboot(s(10)), Decision::Reboot { n: 2 });
        let Decision::Loop(e) = b.on_reboot(s(20)) else {
            panic!("a third reboot within 60 s is a loop");
        };
        assert_eq!(e.count, 3);
        assert!(e.to_string().contains("rebooted 3 times within 60s"));
        assert!(e.to_string().contains("CVMD_MAX_REBOOTS=2"));
    }

    #[test]
    fn old_reboots_leave_the_window() {
        let mut b = RebootBudget::new(RebootPolicy {
            max: 1,
            window: s(60),
        });
        assert_eq!(b.on_reboot(s(0)), Decision::Reboot { n: 1 });
        assert_eq!(b.on_reboot(s(60)), Decision::Reboot { n: 2 });
        assert_eq!(b.on_reboot(s(200)), Decision::Reboot { n: 3 });
        assert!(matches!(b.on_reboot(s(201)), Decision::Loop(_)));
    }

    #[test]
    fn zero_turns_in_place_reboots_off() {
        let mut b = RebootBudget::new(RebootPolicy {
            max: 0,
            window: s(60),
        });
        assert_eq!(b.on_reboot(s(0)), Decision::Exit);
    }
}
