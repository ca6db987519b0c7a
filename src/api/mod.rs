//! The control API (proto/cvmd/v1/control.proto): the generated types, the
//! server cvmd runs on its unix socket, and the client cvmctl uses.

pub mod client;
mod exec;
pub mod health;
pub mod peer;
pub mod server;
pub mod service;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("cvmd.v1");

    /// The control API's file descriptors (build.rs), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cvmd_descriptor");
}
