//! The subcommands of the `cvmd` binary, one module each; the binary only
//! parses and dispatches.

pub mod convert;
pub mod gc;
pub mod logging;
pub mod prefetch;
pub mod preflight;
pub mod pull;
pub mod rootfs;
pub mod run;
pub mod shiftfs;

pub use crate::supervisor::termination::error_line;
