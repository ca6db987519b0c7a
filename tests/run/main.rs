//! Running workspaces with real runc: `cvmd run`, the launch sequence,
//! bundles, escape attempts, the example images, systemd, the terminal,
//! the network and preflight.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod bundle_runc;
mod escape;
mod escape_lazy;
mod example_images;
mod launch;
mod lazy;
mod network;
mod preflight;
mod run_cli;
mod systemd_boot;
mod systemd_unit;
mod terminal;
mod vm_disk;
