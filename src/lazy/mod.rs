//! Lazy start (docs/features.md, "Lazy start"): a workspace whose image is
//! not yet in the node cache, and whose missing layers are eStargz or
//! zstd:chunked (each layer's annotations say which), boots
//! from FUSE mounts that serve each layer's files from its TOC, fetching a
//! file's chunks with Range requests on first read (verified, kept in the
//! node's chunk cache). Meanwhile the normal pull downloads and publishes
//! the layers; each mount then serves from the published dir, and the
//! next start is a warm one.
//!
//! Anything a lazy start cannot do (a layer without a TOC, a registry
//! without Range requests, a TOC that fails a check, no FUSE) makes it a
//! full pull, with one line saying why: the full pull checks every digest,
//! so nothing unverified is ever booted or published.

mod source;
mod toc;
mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvmd_lazyfs::{ChunkCache, LazyHandle, MountOptions, Mounted, ReadPool, Tree};

use crate::digest::Digest;
use crate::image::{ImageError, PullOptions, Resolved};
use crate::registry::Reference;
use crate::store::layers::LayerCache;
use toc::{read_tree, LayerToc, TocTail};

pub use source::{RegistrySpans, SpanCodec};

/// The `lazy` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyMode {
    /// Lazy when every missing layer has a TOC and FUSE works.
    Auto,
    Off,
}

impl FromStr for LazyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LazyMode::Auto),
            "off" => Ok(LazyMode::Off),
            _ => Err(format!("{s:?} is not auto or off")),
        }
    }
}

impl fmt::Display for LazyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LazyMode::Auto => "auto",
            LazyMode::Off => "off",
        })
    }
}

#[derive(Debug, Clone)]
pub struct LazyOptions {
    pub mode: LazyMode,
    /// How long a read waits for the registry before it fails with EIO.
    pub deadline: Duration,
}

/// The chunk cache's place in the node cache.
pub fn chunk_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("chunks")
}

/// Reads a lazy image's layers serve at once, together.
const READ_THREADS: usize = 4;

/// What lazy start's chunk cache may hold: chunks are a start's working
/// set until its layers are published, then redundant; least recently
/// used go first.
pub const CHUNK_BUDGET: u64 = 1 << 30;

/// Bounds the chunk cache (never failing the caller: a warning, and the
/// next gc catches up); `None` when there is none or it failed.
pub fn keep_chunks_within(cache_dir: &Path, budget: u64) -> Option<cvmd_lazyfs::GcReport> {
    let dir = chunk_dir(cache_dir);
    if !dir.exists() {
        return None;
    }
    match cvmd_lazyfs::gc(&dir, budget) {
        Ok(report) => Some(report),
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep lazy start's chunk cache within its budget");
            None
        }
    }
}

/// Whether this process can serve FUSE mounts.
pub fn fuse_works() -> Result<(), String> {
    fuse_opens(Path::new("/dev/fuse")).map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// Whether `dev_fuse` opens as a FUSE server opens it (read and write);
/// preflight asks the same of the machine it checks.
pub fn fuse_opens(dev_fuse: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_fuse)
        .map(drop)
}

/// One layer served lazily, until mounted.
#[derive(Debug)]
struct LazyLayer {
    index: usize,
    blob: Digest,
    diff_id: Digest,
    codec: SpanCodec,
    tree: Mutex<Option<Tree>>,
    /// The files before the prefetch landmark, read first.
    prefetch: Vec<String>,
}

/// An image a start serves lazily: its head, and the layers (by index)
/// whose files come from their TOCs.
#[derive(Debug)]
pub struct LazyImage {
    /// Pinned to the manifest digest.
    pub reference: Reference,
    /// Its background completion pulls from this: the image started,
    /// even if the tag has moved since.
    pub resolved: Resolved,
    layers: Vec<LazyLayer>,
    deadline: Duration,
}

/// What a start does with an image that is not in the cache.
#[derive(Debug)]
pub enum Plan {
    Lazy(LazyImage),
    /// A full pull, from what lazy start resolved when it got that far.
    Whole(Option<Resolved>),
}

impl LazyImage {
    /// How many of the image's layers are served lazily.
    pub fn lazy_layers(&self) -> usize {
        self.layers.len()
    }
}

/// The plan for `reference`: lazy, or a full pull (said in one line,
/// unless lazy start is off or nothing is missing). Errors are those a
/// full pull would have given too (auth, not found).
pub async fn prepare(
    pull: &PullOptions,
    options: &LazyOptions,
    reference: &Reference,
) -> Result<Plan, ImageError> {
    if options.mode == LazyMode::Off {
        return Ok(Plan::Whole(None));
    }
    if let Err(why) = fuse_works() {
        tracing::info!(why, "lazy start unavailable; pulling the image whole");
        return Ok(Plan::Whole(None));
    }
    let resolved = crate::image::head(pull, reference).await?;
    let whole = Plan::Whole(Some(resolved.clone()));
    let client = resolved.client.clone();
    let (manifest_digest, manifest, config) = (
        &resolved.head.manifest_digest,
        &resolved.head.manifest,
        &resolved.head.config,
    );
    let layers = LayerCache::open(&pull.cache_dir)?;
    let mut wanted = Vec::new();
    for (index, (layer, diff_id)) in manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .enumerate()
    {
        if layers.has(diff_id) {
            continue;
        }
        match LayerToc::of(layer) {
            Ok(Some(toc)) => wanted.push((
                index,
                layer.digest.clone(),
                layer.size,
                diff_id.clone(),
                toc,
            )),
            Ok(None) => {
                // Most images are plain gzip: this is the usual path, not news.
                tracing::debug!(layer = %layer.digest, "lazy start: a missing layer has no eStargz or zstd:chunked TOC; pulling the image whole");
                return Ok(whole);
            }
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %e, "lazy start: refused; pulling the image whole");
                return Ok(whole);
            }
        }
    }
    if wanted.is_empty() {
        return Ok(whole);
    }
    let pinned = reference.with_digest(manifest_digest.clone());
    let tocs = chunk_dir(&pull.cache_dir).join("tocs");
    // The TOCs are fetched together and parsed one at a time (check_toc).
    let parsing = Arc::new(tokio::sync::Semaphore::new(1));
    let reads = wanted.into_iter().map(|(index, blob, size, diff_id, toc)| {
        let client = client.clone();
        let pinned = pinned.clone();
        let tocs = tocs.clone();
        let parsing = parsing.clone();
        async move {
            let tail = TocTail {
                client: &client,
                reference: &pinned,
                blob: &blob,
                size,
                cache: &tocs,
            };
            let tree = read_tree(&tail, &toc, &parsing).await;
            (index, blob, diff_id, toc.codec(), tree)
        }
    });
    let mut lazy = Vec::new();
    for (index, blob, diff_id, codec, tree) in futures_util::future::join_all(reads).await {
        match tree {
            Ok((tree, prefetch)) => lazy.push(LazyLayer {
                index,
                blob,
                diff_id,
                codec,
                tree: Mutex::new(Some(tree)),
                prefetch,
            }),
            Err(why) => {
                tracing::warn!(layer = %blob, why, "lazy start: refused; pulling the image whole");
                return Ok(whole);
            }
        }
    }
    Ok(Plan::Lazy(LazyImage {
        reference: pinned,
        resolved,
        layers: lazy,
        deadline: options.deadline,
    }))
}

/// One mounted lazy layer, as the background completion sees it.
#[derive(Debug, Clone)]
pub struct MountedLayer {
    pub diff_id: Digest,
    pub handle: LazyHandle,
    /// The files to read first (before the prefetch landmark), as paths
    /// under the mount.
    pub prefetch: Vec<PathBuf>,
}

/// A lazy image's FUSE mounts: one per lazy layer, in layer order.
#[derive(Debug)]
pub struct LazyMounts {
    mounts: Vec<(Digest, Mounted, Vec<PathBuf>)>,
}

impl LazyMounts {
    /// Each layer: to read its prefetch files, watch it, and switch it to
    /// its published dir.
    pub fn layers(&self) -> Vec<MountedLayer> {
        self.mounts
            .iter()
            .map(|(d, m, prefetch)| MountedLayer {
                diff_id: d.clone(),
                handle: m.handle(),
                prefetch: prefetch.clone(),
            })
            .collect()
    }

    /// Unmounts every layer; the overlay above them must be gone first.
    pub fn unmount(self) {
        for (diff_id, m, _) in self.mounts {
            if let Err(e) = m.unmount() {
                tracing::warn!(layer = %diff_id, error = %e, "cannot unmount a lazy layer");
            }
        }
    }
}

/// Mounts each lazy layer under `dir` (`dir/<index>`; the caller cleared
/// what a killed run left there); returns the mounts and, for every layer of the
/// image, the dir the rootfs takes as its lower: the FUSE mount or the
/// cached layer.
pub fn mount(
    image: &LazyImage,
    cache_dir: &Path,
    dir: &Path,
) -> Result<(LazyMounts, Vec<PathBuf>), String> {
    let layers = LayerCache::open(cache_dir).map_err(|e| e.to_string())?;
    let mut dirs: Vec<PathBuf> = image
        .resolved
        .head
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| layers.tree(d))
        .collect();
    let chunks = Arc::new(ChunkCache::open(chunk_dir(cache_dir)).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Handle::current();
    // One pool for every layer: memory in flight (a read holds its chunk,
    // up to 4 MiB) stays that of READ_THREADS reads however many layers
    // the image has; an image of 6 layers with a pool each peaked at
    // 137-170 MiB (bench/lazy.sh --image big).
    let pool = ReadPool::new(READ_THREADS).map_err(|e| format!("lazy layer read threads: {e}"))?;
    let mut mounts = Vec::new();
    for layer in &image.layers {
        let at = dir.join(layer.index.to_string());
        std::fs::create_dir_all(&at).map_err(|e| format!("{}: {e}", at.display()))?;
        let tree = layer
            .tree
            .lock()
            .map_err(|_| "a lazy layer's tree was poisoned".to_string())?
            .take()
            .ok_or("a lazy layer was mounted twice")?;
        let source = Arc::new(RegistrySpans {
            client: image.resolved.client.clone(),
            reference: image.reference.clone(),
            blob: layer.blob.clone(),
            codec: layer.codec,
            runtime: runtime.clone(),
            deadline: image.deadline,
        });
        let options = MountOptions {
            fsname: format!("cvmd-lazy:{}", layer.blob.short()),
            read_pool: Some(pool.clone()),
            ..MountOptions::default()
        };
        match cvmd_lazyfs::mount(tree, source, chunks.clone(), &options, &at) {
            Ok(m) => {
                let prefetch = layer.prefetch.iter().map(|p| at.join(p)).collect();
                dirs[layer.index] = at;
                mounts.push((layer.diff_id.clone(), m, prefetch));
            }
            Err(e) => {
                LazyMounts { mounts }.unmount();
                return Err(format!("mounting lazy layer {}: {e}", layer.blob));
            }
        }
    }
    Ok((LazyMounts { mounts }, dirs))
}
