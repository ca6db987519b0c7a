//! The launch stage's extras around `runtime create`/`start` (see
//! `workspace`): GPUs, ID-mapped user mounts, the Sysbox daemons and the
//! bootstrap script, cgroup delegation. Each is its own module with its decisions as plain
//! functions; `workspace` strings them into `cvmd run`.

pub mod bootstrap;
pub mod cgroups;
pub mod devices;
pub mod gpu;
pub mod mounts;
pub mod reach;
pub mod sysbox;
