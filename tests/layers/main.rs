//! The layer cache and rootfs assembly: unpacking (bounds, crashes,
//! hostile archives, the umoci oracle), sharing and GC of layers, `cvmd
//! rootfs`, and the overlay/flat/idmapped views.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod bounds;
mod crash;
mod gc;
mod hostile;
mod oracle;
mod rootfs;
mod rootfs_cli;
mod sharing;
