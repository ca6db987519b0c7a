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
mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvmd_lazyfs::{ChunkCache, LazyHandle, MountOptions, Mounted, Tree};

use crate::digest::Digest;
use crate::estargz::{self, TocLimits};
use crate::image::{ImageError, PullOptions};
use crate::registry::manifest::{Compression, ImageConfigHead, ImageManifest};
use crate::registry::{Reference, RegistryClient};
use crate::store::layers::LayerCache;
use crate::zstd_chunked;

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
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
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
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfigHead,
    client: Arc<RegistryClient>,
    layers: Vec<LazyLayer>,
    deadline: Duration,
}

impl LazyImage {
    /// How many of the image's layers are served lazily.
    pub fn lazy_layers(&self) -> usize {
        self.layers.len()
    }
}

/// The lazy plan for `reference`, or `None` when it is to be pulled whole
/// (said in one line, unless lazy start is off or nothing is missing).
/// Errors are those a full pull would have given too (auth, not found).
pub async fn prepare(
    pull: &PullOptions,
    options: &LazyOptions,
    reference: &Reference,
) -> Result<Option<LazyImage>, ImageError> {
    if options.mode == LazyMode::Off {
        return Ok(None);
    }
    if let Err(why) = fuse_works() {
        tracing::info!(why, "lazy start unavailable; pulling the image whole");
        return Ok(None);
    }
    let (client, manifest_digest, manifest, config) = crate::image::head(pull, reference).await?;
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
                tracing::info!(layer = %layer.digest, "lazy start: a missing layer has no eStargz or zstd:chunked TOC; pulling the image whole");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %e, "lazy start: refused; pulling the image whole");
                return Ok(None);
            }
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let pinned = reference.with_digest(manifest_digest.clone());
    let tocs = chunk_dir(&pull.cache_dir).join("tocs");
    let reads = wanted.into_iter().map(|(index, blob, size, diff_id, toc)| {
        let client = client.clone();
        let pinned = pinned.clone();
        let tocs = tocs.clone();
        async move {
            let tail = TocTail {
                client: &client,
                reference: &pinned,
                blob: &blob,
                size,
                cache: &tocs,
            };
            let tree = read_tree(&tail, &toc).await;
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
                return Ok(None);
            }
        }
    }
    Ok(Some(LazyImage {
        reference: pinned,
        manifest_digest,
        manifest,
        config,
        client,
        layers: lazy,
        deadline: options.deadline,
    }))
}

/// What a layer's descriptor promises about its TOC, by format.
#[derive(Debug, Clone)]
enum LayerToc {
    /// The sha256 of the TOC JSON.
    Estargz(Digest),
    ZstdChunked(zstd_chunked::Annotated),
}

impl LayerToc {
    /// The layer's TOC by its annotations, if it is a seekable layer of a
    /// compression that matches the format.
    fn of(layer: &crate::registry::manifest::Layer) -> Result<Option<Self>, String> {
        let annotations = Some(&layer.annotations);
        let estargz =
            estargz::footer::annotated_toc_digest(annotations).map_err(|e| e.to_string())?;
        let zstd = zstd_chunked::annotated(annotations).map_err(|e| e.to_string())?;
        Ok(match (estargz, zstd, layer.compression) {
            (Some(toc), _, Compression::Gzip) => Some(LayerToc::Estargz(toc)),
            (_, Some(promised), Compression::Zstd) => Some(LayerToc::ZstdChunked(promised)),
            _ => None,
        })
    }

    fn codec(&self) -> SpanCodec {
        match self {
            LayerToc::Estargz(_) => SpanCodec::Gzip,
            LayerToc::ZstdChunked(_) => SpanCodec::Zstd,
        }
    }
}

/// Where a layer's TOC and footer come from: the node's copy of them
/// (`chunks/tocs/<blob>`, shared by every pod, checked again on every
/// read like the registry's answer), else two Range requests.
struct TocTail<'a> {
    client: &'a RegistryClient,
    reference: &'a Reference,
    blob: &'a Digest,
    size: u64,
    cache: &'a Path,
}

impl TocTail<'_> {
    /// The TOC member and the footer: the blob's bytes from the TOC's
    /// offset to its end, and that offset.
    async fn fetch(&self, kept_ok: bool) -> Result<(u64, bytes::Bytes), String> {
        let kept = self.kept();
        // Pods starting the image together fetch its TOC once: the others
        // wait here, then read the node's copy.
        let _one_at_a_time = lock(self.cache.join(format!("{}.lock", self.blob.hex()))).await;
        if let Some(bytes) = kept_ok.then(|| std::fs::read(&kept).ok()).flatten() {
            if let Some(offset) = self.size.checked_sub(bytes.len() as u64) {
                return Ok((offset, bytes.into()));
            }
        }
        let footer_at = self
            .size
            .checked_sub(estargz::FOOTER_SIZE)
            .ok_or("the blob is smaller than an eStargz footer")?;
        let footer = self
            .client
            .get_blob_range(self.reference, self.blob, footer_at, estargz::FOOTER_SIZE)
            .await
            .map_err(|e| e.to_string())?;
        let toc_offset = estargz::parse_footer(&footer, self.size).map_err(|e| e.to_string())?;
        let member = self
            .client
            .get_blob_range(
                self.reference,
                self.blob,
                toc_offset,
                footer_at - toc_offset,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut tail = member.to_vec();
        tail.extend_from_slice(&footer);
        // Unchecked bytes may be kept: every read checks them again.
        if let Err(e) = keep(&kept, &tail) {
            tracing::debug!(error = %e, "the TOC is not kept for the node's other pods");
        }
        Ok((toc_offset, tail.into()))
    }

    fn kept(&self) -> PathBuf {
        self.cache.join(self.blob.hex())
    }

    /// A zstd:chunked layer's compressed TOC and where it is: from the
    /// position annotation, else the footer (one more request); the node's
    /// copy when it has the length the position gives.
    async fn fetch_zstd(
        &self,
        promised: &zstd_chunked::Annotated,
        kept_ok: bool,
    ) -> Result<(zstd_chunked::TocPosition, bytes::Bytes), String> {
        let limits = TocLimits::default();
        let _one_at_a_time = lock(self.cache.join(format!("{}.lock", self.blob.hex()))).await;
        let position = match promised.position {
            Some(p) => {
                zstd_chunked::footer::check_position(&p, self.size, &limits)
                    .map_err(|e| e.to_string())?;
                p
            }
            None => {
                let len = self.size.min(zstd_chunked::FOOTER_FRAME_SIZE);
                let tail = self
                    .client
                    .get_blob_range(self.reference, self.blob, self.size - len, len)
                    .await
                    .map_err(|e| e.to_string())?;
                zstd_chunked::parse_footer(&tail, self.size, &limits).map_err(|e| e.to_string())?
            }
        };
        let kept = self.kept();
        if let Some(bytes) = kept_ok.then(|| std::fs::read(&kept).ok()).flatten() {
            if bytes.len() as u64 == position.compressed_len {
                return Ok((position, bytes.into()));
            }
        }
        let toc = self
            .client
            .get_blob_range(
                self.reference,
                self.blob,
                position.offset,
                position.compressed_len,
            )
            .await
            .map_err(|e| e.to_string())?;
        // Unchecked bytes may be kept: every read checks them again.
        if let Err(e) = keep(&kept, &toc) {
            tracing::debug!(error = %e, "the TOC is not kept for the node's other pods");
        }
        Ok((position, toc))
    }
}

/// An exclusive `flock` on `path`, held until the file is dropped; `None`
/// (no lock, a duplicate fetch at worst) when it cannot be taken.
async fn lock(path: PathBuf) -> Option<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(path.parent()?).ok()?;
        let file = std::fs::File::create(&path).ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
        Some(file)
    })
    .await
    .ok()
    .flatten()
}

/// Writes `bytes` at `path` whole or not at all.
fn keep(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The TOC at the end of a layer's blob, checked against the digest the
/// manifest promised and as hostile input.
async fn check_toc(
    tail: &TocTail<'_>,
    toc: &LayerToc,
    kept_ok: bool,
) -> Result<estargz::TocIndex, String> {
    let toc = match toc {
        LayerToc::Estargz(digest) => digest,
        LayerToc::ZstdChunked(promised) => {
            let (position, bytes) = tail.fetch_zstd(promised, kept_ok).await?;
            let checksum = promised.checksum.clone();
            let limits = TocLimits::default();
            return tokio::task::spawn_blocking(move || {
                zstd_chunked::read_toc(&bytes, &position, &checksum, &limits)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string());
        }
    };
    let (toc_offset, bytes) = tail.fetch(kept_ok).await?;
    let footer_at = bytes
        .len()
        .checked_sub(usize::try_from(estargz::FOOTER_SIZE).unwrap_or(usize::MAX))
        .ok_or("the blob's tail is shorter than an eStargz footer")?;
    let found = estargz::parse_footer(&bytes[footer_at..], tail.size).map_err(|e| e.to_string())?;
    if found != toc_offset {
        return Err(format!(
            "the footer puts the TOC at {found}, its bytes start at {toc_offset}"
        ));
    }
    let member = bytes.slice(..footer_at);
    let limits = TocLimits::default();
    let toc = toc.clone();
    let (index, _) = tokio::task::spawn_blocking(move || {
        estargz::read_toc(member.as_ref(), toc_offset, Some(&toc), &limits)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(index)
}

/// A layer's tree from the TOC at the end of its blob, checked against
/// the TOC digest the manifest promised; and the regular files its
/// prefetch landmark puts first.
async fn read_tree(tail: &TocTail<'_>, toc: &LayerToc) -> Result<(Tree, Vec<String>), String> {
    let index = match check_toc(tail, toc, true).await {
        Ok(index) => index,
        // The node's copy may be what failed: the registry's answer decides.
        Err(why) if tail.kept().exists() => {
            tracing::debug!(
                why,
                "the node's copy of a TOC failed its check; asking the registry"
            );
            let _ = std::fs::remove_file(tail.kept());
            check_toc(tail, toc, false).await?
        }
        Err(why) => return Err(why),
    };
    let prefetch = index
        .prefetch_entries()
        .into_iter()
        .flatten()
        .filter(|e| matches!(e.kind, estargz::EntryKind::File { .. }))
        .map(|e| e.path.clone())
        .collect();
    let tree = tree::build(&index).map_err(|e| format!("its TOC: {e}"))?;
    Ok((tree, prefetch))
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
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| layers.tree(d))
        .collect();
    let chunks = Arc::new(ChunkCache::open(chunk_dir(cache_dir)).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Handle::current();
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
            client: image.client.clone(),
            reference: image.reference.clone(),
            blob: layer.blob.clone(),
            codec: layer.codec,
            runtime: runtime.clone(),
            deadline: image.deadline,
        });
        let options = MountOptions {
            fsname: format!("cvmd-lazy:{}", layer.blob.short()),
            read_threads: 4,
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
