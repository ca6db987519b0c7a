//! cvmd: the supervisor of a container-based virtual machine workspace.
//! See docs/ARCHITECTURE.md for the data path; each stage is a module here.

pub mod api;
pub mod backend;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod digest;
pub mod exec;
pub mod idmap;
pub mod image;
pub mod launch;
pub mod metrics;
pub mod network;
pub mod preflight;
pub mod progress;
pub mod pull;
pub mod registry;
pub mod rootfs;
pub mod runtime;
pub mod shiftfs;
pub mod store;
pub mod supervisor;
pub mod unpack;
pub mod workspace;
