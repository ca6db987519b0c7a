//! PID 1: the one reaper, signal forwarding and the stop sequence, and the
//! workspace's state as the control API sees it.

pub mod lifecycle;
pub mod logbook;
pub mod loglines;
pub mod notify;
pub mod oom;
pub use cvmd_oci::{pidfd, reaper};
pub mod reboot;
pub mod signals;
pub mod state;
pub mod termination;
