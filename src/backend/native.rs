//! The native backend: cvmd's registry client, content store and layer
//! cache (`crate::image`), and the rootfs assembled over cached layer dirs
//! under a lease that keeps them from cvmd's gc.

use std::path::Path;

use super::{BackendError, Hold, ReadyImage, Rootfs, Source};
use crate::config::Settings;
use crate::image::PullPolicy;
use crate::pull::ProgressSink;
use crate::registry::Reference;
use crate::rootfs::{self, Request};
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
    let idmap =
        crate::workspace::idmap_for(settings.idmap, &settings.cache_dir, &settings.workspace)
            .await?;
    // A crashed earlier run may have left its mount.
    rootfs::teardown(target)?;
    let assembled = rootfs::assemble(&Request {
        layers: diff_ids.iter().map(|d| layers.tree(d)).collect(),
        workspace_dir: ws_dir.join("disk"),
        target: target.to_path_buf(),
        mode: settings.rootfs_mode,
        idmap,
        reset: false,
    })?;
    tracing::info!(mode = ?assembled.mode, idmap = ?assembled.idmap_mode, "rootfs ready");
    Ok(Rootfs {
        target: target.to_path_buf(),
        idmap,
        mode: crate::workspace::rootfs_mode_name(assembled.mode),
        idmap_mode: crate::workspace::idmap_mode_name(assembled.idmap_mode),
        hold: Hold::Native(lease),
    })
}
