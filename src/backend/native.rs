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
    let ready = crate::image::ensure(settings, reference, policy, progress).await?;
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
        source: Source::Native(ready.record),
    })
}

pub async fn mount_rootfs(
    settings: &Settings,
    record: &ImageRecord,
    ws_dir: &Path,
    target: &Path,
) -> Result<Rootfs, BackendError> {
    let layers = LayerCache::open(&settings.cache_dir)?;
    let diff_ids: Vec<_> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
    let lease = Lease::acquire(
        &settings.cache_dir,
        &settings.workspace,
        &record.reference,
        &diff_ids,
        Some(target),
    )?;
    let dirs = diff_ids.iter().map(|d| layers.tree(d)).collect();
    super::assemble(settings, dirs, ws_dir, target, Hold::Native(lease)).await
}
