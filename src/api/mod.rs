//! The control API (proto/cvmd/v1/control.proto): the generated types, the
//! server cvmd runs on its unix socket, and the client cvmctl uses.

pub mod client;
mod exec;
pub mod peer;
pub mod server;
pub mod service;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("cvmd.v1");
}
