//! The native backend: cvmd's registry client, content store and layer
//! cache (`crate::image`), and the rootfs assembled over cached layer dirs
//! under a lease that keeps them from cvmd's gc.

use std::path::Path;

use super::{BackendError, Hold, ReadyImage, Rootfs, Source};
use crate::config::Settings;
use crate::image::PullPolicy;
use crate::pull::ProgressSink;
use crate::registry::Reference;
use crate::store::images::ImageRecord;
use crate::store::layers::LayerCache;
use crate::store::lease::Lease;
use crate::store::ContentStore;

pub async fn ensure(
    settings: &Settings,
    reference: &Reference,
    policy: PullPolicy,
    progress: &dyn ProgressSink,
) -> Result<ReadyImage, BackendError> {
    let (ready, lease) = crate::image::ensure_leased(
        settings,
        reference,
        policy,
        progress,
        &settings.node_identity(),
        None,
    )
    .await?;
    let store = ContentStore::open(&settings.cache_dir)?;
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
    settings: &Settings,
    record: &ImageRecord,
    lease: std::sync::Arc<Lease>,
    disk: &crate::disk::Prepared,
    target: &Path,
) -> Result<Rootfs, BackendError> {
    let layers = LayerCache::open(&settings.cache_dir)?;
    let dirs = record
        .layers
        .iter()
        .map(|l| layers.tree(&l.diff_id))
        .collect();
    super::assemble(settings, dirs, disk, target, Hold::Native(lease)).await
}
