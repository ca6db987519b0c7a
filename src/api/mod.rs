//! The control API's server side: what cvmd runs on its unix socket. The
//! generated types and the client are the `cvmd-api` crate (crates/api),
//! re-exported here under the names the daemon uses.

pub use cvmd_api::{client, pb};
mod exec_call;
pub mod health;
pub mod peer;
pub mod server;
pub mod service;
