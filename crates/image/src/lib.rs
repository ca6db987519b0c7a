//! Images into the node cache, stage by stage: the registry client
//! (`registry`), verified and resumable pulls (`pull`), the content store,
//! layer cache, leases and gc (`store`), and the tar unpacker that turns a
//! layer into a directory in overlayfs form (`unpack`).
//! docs/ARCHITECTURE.md describes the cache format and its locks.

pub mod estargz;
pub mod pull;
pub mod registry;
pub mod store;
pub mod unpack;
pub mod zstd_chunked;
