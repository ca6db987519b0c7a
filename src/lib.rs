//! cvmd: the supervisor of a container-based virtual machine workspace.
//! See docs/ARCHITECTURE.md for the data path. The stages below the daemon
//! are crates of their own (crates/): they are re-exported here under the
//! names the daemon's modules and the tests use.

pub mod api;
pub mod backend;
pub mod cli;
pub mod config;
pub mod disk;
pub mod idmap;
pub mod image;
pub mod launch;
pub mod lazy;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod preflight;
pub mod shiftfs;
pub mod supervisor;
pub mod workspace;

pub use cvmd_digest as digest;
pub use cvmd_image::{estargz, pull, registry, store, unpack, zstd_chunked};
pub use cvmd_oci::{bundle, exec, runtime};
pub use cvmd_progress as progress;
pub use cvmd_rootfs as rootfs;
