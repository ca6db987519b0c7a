//! PID 1: the one reaper, signal forwarding and the stop sequence.

pub mod reaper;
pub mod signals;
