//! cvmd's control API (crates/api/proto/cvmd/v1/control.proto): the generated types,
//! the client that connects to cvmd's unix socket, where that socket is,
//! and the client's side of a terminal. The server lives in the cvmd
//! daemon; this crate is all cvmctl links.

pub mod client;
pub mod socket;
pub mod terminal;

/// The largest response cvmd sends: one log line or output chunk. The
/// server encodes at most this and the client decodes at most this.
pub const MAX_RESPONSE: usize = 1 << 20;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("cvmd.v1");

    /// The control API's file descriptors (build.rs), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cvmd_descriptor");
}
