//! The control API and what rides on it: cvmctl, health, metrics, stop and
//! exec, sd_notify, the VM lifecycle.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod control_api;
mod health;
mod metrics;
mod stop_exec;
mod systemd_notify;
mod vm_lifecycle;
