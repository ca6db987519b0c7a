//! A lazy layer: a read-only FUSE file system serving a layer's tree,
//! known whole up front, whose file bytes are fetched as chunks on first
//! read (DESIGN: issue #15, "lazy start").
//!
//! It knows nothing of the layer format or of HTTP: the caller builds a
//! [`Tree`] with a [`TreeBuilder`] from the layer's table of contents and
//! gives a [`ChunkSource`] that fetches one chunk's bytes. Chunks are
//! verified against their digest and kept in a node-wide [`ChunkCache`]
//! (bounded by [`gc`]), so every span is fetched once per node. A read
//! that misses a chunk also fetches the uncached chunks after it in the
//! blob, in one [`ChunkSource::fetch_run`] (read-ahead, bounded by
//! [`MountOptions::readahead_bytes`]). Once the
//! whole layer is unpacked locally, [`LazyHandle::set_backing_dir`] makes
//! reads come from it.
//!
//! Whiteouts arrive in overlay form (a 0:0 character device, or the
//! `trusted.overlay.opaque` xattr on a directory) and are served as such,
//! so a kernel overlay with this mount as a lower layer honours them.

mod cache;
mod fs;
mod mount;
mod read;
mod readahead;
mod source;
mod stats;
mod tree;

pub use cache::{gc, CacheError, ChunkCache, GcReport};
pub use mount::{detach_stale, mount, LazyHandle, MountError, MountOptions, Mounted};
pub use read::ReadPool;
pub use source::{ChunkSource, FetchError};
pub use stats::StatsSnapshot;
pub use tree::{Chunk, Entry, Kind, Meta, Tree, TreeBuilder, TreeError, MAX_CHUNK_SIZE};
