//! The TOC as serialized (`stargz.index.json`, "TOC and TOCEntries" in
//! stargz-snapshotter's docs/estargz.md) and the names and annotations
//! the format fixes. Nothing here is checked: see `toc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The TOC's name in the tar stream, its last entry.
pub const TOC_NAME: &str = "stargz.index.json";
/// Marks the end of the prioritized files ("Prioritized Files and Landmark Files").
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Says no file is prioritized.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The layer descriptor annotation holding the sha256 of the TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The layer's decompressed size, as a decimal string: not in
/// docs/estargz.md, but set by the reference converter for
/// containers/storage, which needs it to mount a layer lazily.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// Whether `name` (a root-level member name) is eStargz metadata rather than
/// layer content: the TOC and the landmarks.
pub fn is_metadata_name(name: &str) -> bool {
    let name = name.strip_prefix("./").unwrap_or(name);
    matches!(name, TOC_NAME | PREFETCH_LANDMARK | NO_PREFETCH_LANDMARK)
}

/// The TOC as serialized. Unknown fields (`NumLink`, ...) are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawToc {
    pub version: i64,
    #[serde(default)]
    pub entries: Vec<RawEntry>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u(n: &u64) -> bool {
    *n == 0
}

/// One TOCEntry. Integers are as wide as the spec's and signed where it
/// says so, so a hostile value parses and is refused by name, not as a JSON
/// error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_zero_u")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default)]
    pub mode: i64,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Values base64 (Go's `[]byte` in JSON).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    /// Where the chunk starts inside its gzip member's inflated bytes (a
    /// member shared by several small chunks); 0 when it starts the member.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    /// zstd:chunked only: where the file's last zstd frame ends (on its
    /// `reg` entry).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    /// zstd:chunked only: `""` for data, `"zeros"` for a run of zeros
    /// (still stored, compressed, in its frame).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
}
