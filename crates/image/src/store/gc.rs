//! Garbage collection of the node cache: image records beyond a disk budget
//! go least recently used first, then every blob and layer that no record
//! names and no running workspace leases is removed.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::layers::{remove_tree, LayerCache};
use super::{io_err, lease, ContentStore, StoreError};
use cvmd_digest::Digest;

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed_images: Vec<String>,
    pub removed_blobs: u64,
    pub removed_layers: u64,
    pub removed_partials: u64,
    pub freed_bytes: u64,
    pub kept_in_use: u64,
    pub used_bytes: u64,
}

/// Collects garbage. `budget`: keep the cache's estimated size under this
/// many bytes by dropping least recently used images not in use.
pub async fn collect(cache_dir: &Path, budget: Option<u64>) -> Result<GcReport, StoreError> {
    collect_sparing(cache_dir, budget, &[]).await
}

/// [`collect`], never dropping the image records named in `spare` (what
/// the caller just pulled) for the budget.
pub async fn collect_sparing(
    cache_dir: &Path,
    budget: Option<u64>,
    spare: &[String],
) -> Result<GcReport, StoreError> {
    let _exclusive = lease::gc_lock(cache_dir).await?;
    let store = ContentStore::open(cache_dir)?;
    let layers = LayerCache::open(cache_dir)?;
    let images = store.images();
    let in_use = lease::layers_in_use(cache_dir)?;
    let mut report = GcReport::default();

    let mut records = images.list()?;
    if let Some(budget) = budget {
        let mut used = usage(&store, &layers)?;
        let mut i = 0;
        while used > budget && i < records.len() {
            let (record, _, _) = &records[i];
            if spare.contains(&record.reference)
                || record.layers.iter().any(|l| in_use.contains(&l.diff_id))
            {
                i += 1;
                continue;
            }
            // What goes with it: its layers that no other record shares.
            let others: BTreeSet<&Digest> = records
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, (r, _, _))| r.layers.iter().map(|l| &l.diff_id))
                .collect();
            let freed: u64 = record
                .layers
                .iter()
                .filter(|l| !others.contains(&l.diff_id))
                .map(|l| l.size + layer_bytes(&layers, &l.diff_id))
                .sum();
            images.remove(&record.reference)?;
            report.removed_images.push(record.reference.clone());
            used = used.saturating_sub(freed);
            records.remove(i);
        }
    }

    let mut keep_blobs: BTreeSet<Digest> = BTreeSet::new();
    let mut keep_layers: BTreeSet<Digest> = in_use.clone();
    for (record, _, _) in &records {
        keep_blobs.insert(record.manifest.clone());
        keep_blobs.insert(record.config.clone());
        for l in &record.layers {
            keep_blobs.insert(l.blob.clone());
            keep_layers.insert(l.diff_id.clone());
        }
    }

    for diff_id in layers.list()? {
        if keep_layers.contains(&diff_id) {
            if in_use.contains(&diff_id) {
                report.kept_in_use += 1;
            }
            continue;
        }
        let guard = layers.lock(&diff_id, || {}).await?;
        report.freed_bytes += layer_bytes(&layers, &diff_id);
        layers.remove(&guard, &diff_id)?;
        report.removed_layers += 1;
    }

    let blobs_dir = cache_dir.join("blobs").join("sha256");
    for entry in std::fs::read_dir(&blobs_dir).map_err(io_err(&blobs_dir))? {
        let entry = entry.map_err(io_err(&blobs_dir))?;
        let Ok(digest) =
            format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>()
        else {
            continue;
        };
        if keep_blobs.contains(&digest) {
            continue;
        }
        report.freed_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        report.removed_blobs += 1;
    }

    // Partial downloads nobody is resuming: the ingest lock is free.
    let ingest = cache_dir.join("ingest");
    for entry in std::fs::read_dir(&ingest).map_err(io_err(&ingest))? {
        let path = entry.map_err(io_err(&ingest))?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(hex) = name.strip_suffix(".partial") {
            if !super::lock::is_held(&ingest.join(format!("{hex}.lock"))) {
                report.freed_bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                report.removed_partials += 1;
            }
        }
    }
    // Temp files of small blobs and records whose writer died before
    // renaming them (a live writer renames within moments).
    for dir in [&ingest, &cache_dir.join("images")] {
        report.removed_partials += remove_old_temp_files(dir)?;
    }
    // Staging dirs of crashed unpacks whose layer lock is free.
    let staging = cache_dir.join("layers").join("staging");
    for entry in std::fs::read_dir(&staging).map_err(io_err(&staging))? {
        let path = entry.map_err(io_err(&staging))?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let hex = name.split('.').next().unwrap_or_default();
        if let Ok(d) = format!("sha256:{hex}").parse::<Digest>() {
            if !super::lock::is_held(&layers.lock_path(&d)) {
                remove_tree(&path)?;
            }
        }
    }
    report.used_bytes = usage(&store, &layers)?;
    tracing::info!(?report, "garbage collected");
    Ok(report)
}

const TEMP_FILE_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

fn remove_old_temp_files(dir: &Path) -> Result<u64, StoreError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let temp = name.contains(".small.") || name.starts_with(".record.");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TEMP_FILE_AGE);
        if temp && old {
            let _ = std::fs::remove_file(entry.path());
            removed += 1;
        }
    }
    Ok(removed)
}

/// The cache's size as gc counts it: blob sizes plus the file bytes each
/// layer's record states (walking every layer tree would be too slow).
/// The cache's estimated size at `cache_dir`: what [`collect`] weighs
/// against the budget (blobs plus unpacked layers' file bytes).
pub fn usage_of(cache_dir: &Path) -> Result<u64, StoreError> {
    usage(
        &ContentStore::open(cache_dir)?,
        &LayerCache::open(cache_dir)?,
    )
}

fn usage(store: &ContentStore, layers: &LayerCache) -> Result<u64, StoreError> {
    let blobs_dir = store.root().join("blobs").join("sha256");
    let mut total = 0;
    for entry in std::fs::read_dir(&blobs_dir).map_err(io_err(&blobs_dir))? {
        total += entry
            .map_err(io_err(&blobs_dir))?
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
    }
    for d in layers.list()? {
        total += layer_bytes(layers, &d);
    }
    Ok(total)
}

fn layer_bytes(layers: &LayerCache, diff_id: &Digest) -> u64 {
    std::fs::read(layers.dir(diff_id).join("layer.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<super::layers::LayerMeta>(&b).ok())
        .map_or(0, |m| m.file_bytes)
}
