//! The native backend: cvmd's registry client, content store and layer
//! cache (`crate::image`), and the rootfs assembled over cached layer dirs
//! under a lease that keeps them from cvmd's gc.

use std::path::Path;
use std::sync::Arc;

use super::{BackendError, Hold, Holder, MountRequest, ReadyImage, Rootfs, Source};
use crate::image::{PullOptions, PullPolicy, Resolved};
use crate::lazy::{LazyImage, LazyOptions, Plan};
use crate::pull::ProgressSink;
use crate::registry::Reference;
use crate::store::images::ImageRecord;
use crate::store::layers::LayerCache;
use crate::store::lease::Lease;
use crate::store::ContentStore;

pub async fn ensure(
    pull: &PullOptions,
    reference: &Reference,
    policy: PullPolicy,
    holder: Holder<'_>,
    lazy: Option<&LazyOptions>,
    progress: &dyn ProgressSink,
) -> Result<ReadyImage, BackendError> {
    let mut resolved = None;
    if let Some(options) = lazy.filter(|_| policy != PullPolicy::Never) {
        match ensure_lazily(pull, reference, policy, &holder, options).await? {
            Start::Lazy(ready) => return Ok(*ready),
            Start::Whole(head) => resolved = head,
        }
    }
    let (ready, lease) = crate::image::ensure_leased(
        pull,
        reference,
        policy,
        progress,
        holder.identity,
        holder.mount,
        resolved,
    )
    .await?;
    let store = ContentStore::open(&pull.cache_dir)?;
    let config = super::parse_config(
        &store.read_blob(&ready.record.config)?,
        &ready.record.reference,
    )?;
    Ok(ReadyImage {
        reference: ready.record.reference.clone(),
        digest: ready.record.manifest.clone(),
        config,
        origin: if ready.pulled {
            "registry, into cvmd's cache".into()
        } else {
            "cvmd's cache".into()
        },
        pulled: ready.pulled,
        source: Source::Native {
            record: ready.record,
            lease: Arc::new(lease),
            lazy: None,
        },
    })
}

/// How [`ensure_lazily`] went.
enum Start {
    Lazy(Box<ReadyImage>),
    /// The usual way (the reason was logged), from what lazy start
    /// resolved when it got that far.
    Whole(Option<Resolved>),
}

/// The image made ready to boot before its layers are downloaded, when
/// it is not in the cache and its missing layers are eStargz or
/// zstd:chunked.
async fn ensure_lazily(
    pull: &PullOptions,
    reference: &Reference,
    policy: PullPolicy,
    holder: &Holder<'_>,
    options: &LazyOptions,
) -> Result<Start, BackendError> {
    // A warm start stays one.
    if policy != PullPolicy::Always && crate::image::cached(pull, reference)?.is_some() {
        return Ok(Start::Whole(None));
    }
    crate::store::create_private_dir(&pull.cache_dir)?;
    let _no_gc = crate::store::lease::pull_lock(&pull.cache_dir).await?;
    let image = match crate::lazy::prepare(pull, options, reference).await? {
        Plan::Lazy(image) => image,
        Plan::Whole(resolved) => return Ok(Start::Whole(resolved)),
    };
    let head = &image.resolved.head;
    let record = ImageRecord::new(
        reference,
        &head.manifest_digest,
        &head.manifest,
        &head.config,
    );
    let lease = Lease::acquire(
        &pull.cache_dir,
        holder.identity,
        &record.reference,
        &record.diff_ids(),
        holder.mount,
    )
    .await?;
    let store = ContentStore::open(&pull.cache_dir)?;
    let config = super::parse_config(&store.read_blob(&record.config)?, &record.reference)?;
    let (lazy, all) = (image.lazy_layers(), record.layers.len());
    tracing::info!(
        image = %reference,
        digest = %head.manifest_digest,
        "lazy start: {lazy} of {all} layers are served on demand while they download"
    );
    Ok(Start::Lazy(Box::new(ReadyImage {
        reference: record.reference.clone(),
        digest: record.manifest.clone(),
        config,
        origin: format!(
            "registry, lazily: {lazy} of {all} layers served on demand while they download"
        ),
        pulled: true,
        source: Source::Native {
            record,
            lease: Arc::new(lease),
            lazy: Some(Arc::new(image)),
        },
    })))
}

/// Mounts the rootfs over the layers `lease` (taken by [`ensure`]) keeps
/// from gc; a lazy image's layers that are not cached yet are FUSE mounts
/// under the workspace's dir.
pub async fn mount_rootfs(
    cache_dir: &Path,
    record: &ImageRecord,
    lease: Arc<Lease>,
    lazy: Option<&Arc<LazyImage>>,
    request: &MountRequest<'_>,
) -> Result<Rootfs, BackendError> {
    let layers = LayerCache::open(cache_dir)?;
    let Some(image) = lazy else {
        let dirs = record
            .layers
            .iter()
            .map(|l| layers.tree(&l.diff_id))
            .collect();
        return super::assemble(cache_dir, dirs, request, Hold::Native(lease, None)).await;
    };
    let at = request
        .target
        .parent()
        .unwrap_or(Path::new("/"))
        .join("lazy");
    // What a killed cvmd left: its overlay over FUSE mounts nobody serves
    // (the overlay first: it holds them).
    crate::rootfs::teardown(&request.target)?;
    crate::rootfs::teardown(&at)?;
    let (mounts, dirs) = crate::lazy::mount(image, cache_dir, &at).map_err(BackendError::Lazy)?;
    super::assemble(cache_dir, dirs, request, Hold::Native(lease, Some(mounts))).await
}
