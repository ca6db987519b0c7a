//! The native backend: cvmd's registry client, content store and layer
//! cache (`crate::image`), and the rootfs assembled over cached layer dirs
//! under a lease that keeps them from cvmd's gc.

use std::path::Path;

use super::{BackendError, Hold, Holder, MountRequest, ReadyImage, Rootfs, Source};
use crate::image::{PullOptions, PullPolicy};
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
    progress: &dyn ProgressSink,
) -> Result<ReadyImage, BackendError> {
    let (ready, lease) = crate::image::ensure_leased(
        pull,
        reference,
        policy,
        progress,
        holder.identity,
        holder.mount,
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
            lease: std::sync::Arc::new(lease),
        },
    })
}

/// Mounts the rootfs over the layers `lease` (taken by [`ensure`]) keeps
/// from gc.
pub async fn mount_rootfs(
    cache_dir: &Path,
    record: &ImageRecord,
    lease: std::sync::Arc<Lease>,
    request: &MountRequest<'_>,
) -> Result<Rootfs, BackendError> {
    let layers = LayerCache::open(cache_dir)?;
    let dirs = record
        .layers
        .iter()
        .map(|l| layers.tree(&l.diff_id))
        .collect();
    super::assemble(cache_dir, dirs, request, Hold::Native(lease)).await
}
