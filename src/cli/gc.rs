//! `cvmd gc`: remove blobs and layers no image needs, oldest images first
//! beyond a disk budget; never what a running workspace mounts. Lazy
//! start's chunk cache is kept within its own budget.

use crate::config::Settings;
use crate::progress::human_bytes;
use crate::store::gc;

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Also drop least recently used images until the cache is under this
    /// size (e.g. 50GiB); defaults to the cache_budget setting.
    #[arg(long)]
    pub budget: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn gc(settings: &Settings, args: &GcArgs) -> anyhow::Result<()> {
    let budget = match &args.budget {
        Some(b) => {
            Some(crate::config::parse_size(b).map_err(|e| anyhow::anyhow!("--budget: {e}"))?)
        }
        None => settings.run.pull.cache_budget,
    };
    let cache_dir = &settings.run.pull.cache_dir;
    let report = gc::collect(cache_dir, budget).await?;
    let chunks = crate::lazy::keep_chunks_within(cache_dir, crate::lazy::CHUNK_BUDGET);
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        if let (Some(obj), Some(c)) = (json.as_object_mut(), &chunks) {
            obj.insert(
                "chunks".into(),
                serde_json::json!({
                    "removed": c.removed_chunks,
                    "freed_bytes": c.removed_bytes,
                    "kept_bytes": c.kept_bytes,
                }),
            );
        }
        println!("{json}");
    } else {
        for image in &report.removed_images {
            println!("removed image {image}");
        }
        println!(
            "removed {} layers, {} blobs, {} partial downloads; freed {}; {} layers kept in use; cache now {}",
            report.removed_layers,
            report.removed_blobs,
            report.removed_partials,
            human_bytes(report.freed_bytes),
            report.kept_in_use,
            human_bytes(report.used_bytes)
        );
        if let Some(c) = chunks {
            println!(
                "lazy start's chunk cache: removed {} chunks, freed {}; holds {}",
                c.removed_chunks,
                human_bytes(c.removed_bytes),
                human_bytes(c.kept_bytes)
            );
        }
    }
    Ok(())
}
