//! A lazy layer's TOC: which format its descriptor promises, fetching it
//! (the node's copy under `chunks/tocs/`, else Range requests: eStargz's
//! footer then TOC member; zstd:chunked's compressed TOC at its annotated
//! position, or found from its footer), checking it, and the tree it
//! gives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;

use cvmd_lazyfs::Tree;

use super::{tree, SpanCodec};
use crate::digest::Digest;
use crate::estargz::{self, TocLimits};
use crate::registry::manifest::Compression;
use crate::registry::{Reference, RegistryClient};
use crate::zstd_chunked;

/// What a layer's descriptor promises about its TOC, by format.
#[derive(Debug, Clone)]
pub(super) enum LayerToc {
    /// The sha256 of the TOC JSON.
    Estargz(Digest),
    ZstdChunked(zstd_chunked::Annotated),
}

impl LayerToc {
    /// The layer's TOC by its annotations, if it is a seekable layer of a
    /// compression that matches the format.
    pub(super) fn of(layer: &crate::registry::manifest::Layer) -> Result<Option<Self>, String> {
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

    pub(super) fn codec(&self) -> SpanCodec {
        match self {
            LayerToc::Estargz(_) => SpanCodec::Gzip,
            LayerToc::ZstdChunked(_) => SpanCodec::Zstd,
        }
    }
}

/// Where a layer's TOC and footer come from: the node's copy of them
/// (`chunks/tocs/<blob>`, shared by every pod, checked again on every
/// read like the registry's answer), else two Range requests.
pub(super) struct TocTail<'a> {
    pub(super) client: &'a RegistryClient,
    pub(super) reference: &'a Reference,
    pub(super) blob: &'a Digest,
    pub(super) size: u64,
    pub(super) cache: &'a Path,
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

/// The tree (and prefetch files) of the TOC at the end of a layer's
/// blob, checked against what the manifest promised and as hostile input.
///
/// Parsed one layer at a time (`parsing`), and the parsed TOC dropped as
/// soon as its tree is built, on the same thread: an image's TOCs parsed
/// all at once took cvmd to 134 MiB for 6 layers of 8.5k entries
/// (bench/lazy.sh --image big), while its trees keep a fraction of that.
async fn check_toc(
    tail: &TocTail<'_>,
    toc: &LayerToc,
    kept_ok: bool,
    parsing: &Arc<Semaphore>,
) -> Result<(Tree, Vec<String>), String> {
    let limits = TocLimits::default();
    let parse: Box<dyn FnOnce() -> Result<estargz::TocIndex, String> + Send> = match toc {
        LayerToc::ZstdChunked(promised) => {
            let (position, bytes) = tail.fetch_zstd(promised, kept_ok).await?;
            let checksum = promised.checksum.clone();
            Box::new(move || {
                zstd_chunked::read_toc(&bytes, &position, &checksum, &limits)
                    .map_err(|e| e.to_string())
            })
        }
        LayerToc::Estargz(digest) => {
            let (toc_offset, bytes) = tail.fetch(kept_ok).await?;
            let footer_at = bytes
                .len()
                .checked_sub(usize::try_from(estargz::FOOTER_SIZE).unwrap_or(usize::MAX))
                .ok_or("the blob's tail is shorter than an eStargz footer")?;
            let found =
                estargz::parse_footer(&bytes[footer_at..], tail.size).map_err(|e| e.to_string())?;
            if found != toc_offset {
                return Err(format!(
                    "the footer puts the TOC at {found}, its bytes start at {toc_offset}"
                ));
            }
            let member = bytes.slice(..footer_at);
            let digest = digest.clone();
            Box::new(move || {
                estargz::read_toc(member.as_ref(), toc_offset, Some(&digest), &limits)
                    .map(|(index, _)| index)
                    .map_err(|e| e.to_string())
            })
        }
    };
    let permit = parsing
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let _one_at_a_time = permit;
        let index = parse()?;
        let prefetch = index
            .prefetch_entries()
            .into_iter()
            .flatten()
            .filter(|e| matches!(e.kind, estargz::EntryKind::File { .. }))
            .map(|e| e.path.clone())
            .collect();
        let tree = tree::build(&index).map_err(|e| format!("its TOC: {e}"))?;
        Ok((tree, prefetch))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A layer's tree from the TOC at the end of its blob, checked against
/// what the manifest promised; and the regular files its prefetch
/// landmark puts first.
pub(super) async fn read_tree(
    tail: &TocTail<'_>,
    toc: &LayerToc,
    parsing: &Arc<Semaphore>,
) -> Result<(Tree, Vec<String>), String> {
    match check_toc(tail, toc, true, parsing).await {
        Ok(tree) => Ok(tree),
        // The node's copy may be what failed: the registry's answer decides.
        Err(why) if tail.kept().exists() => {
            tracing::debug!(
                why,
                "the node's copy of a TOC failed its check; asking the registry"
            );
            let _ = std::fs::remove_file(tail.kept());
            check_toc(tail, toc, false, parsing).await
        }
        Err(why) => Err(why),
    }
}
