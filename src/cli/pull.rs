//! `cvmd pull IMAGE`.

use std::io::IsTerminal;

use anyhow::Context;

use crate::config::Settings;
use crate::progress::{JsonLines, PlainLines, TerminalBars};
use crate::pull::{ProgressSink, PulledImage};
use crate::registry::Reference;

#[derive(clap::Args)]
pub struct PullArgs {
    /// Image reference (defaults to the image setting).
    // Its own id: "image" is the global setting's.
    #[arg(id = "image_ref", value_name = "IMAGE")]
    pub image: Option<String>,
    /// One JSON object per event on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only store the verified blobs; do not unpack layers into the cache.
    #[arg(long)]
    pub no_unpack: bool,
}

pub async fn pull(settings: &Settings, args: &PullArgs) -> anyhow::Result<()> {
    let image = args
        .image
        .clone()
        .or_else(|| settings.image.clone())
        .context("no image: give one as an argument or set CVMD_IMAGE")?;
    let progress: Box<dyn ProgressSink> = if args.json {
        Box::new(JsonLines)
    } else if std::io::stderr().is_terminal() {
        Box::new(TerminalBars::default())
    } else {
        Box::new(PlainLines)
    };
    let reference: Reference = image.parse()?;
    let mut puller = crate::image::puller(settings)?;
    puller.unpack = !args.no_unpack;
    let pulled = puller.pull(&reference, progress.as_ref()).await?;
    if let Some(budget) = settings.cache_budget {
        crate::store::gc::collect(&settings.cache_dir, Some(budget)).await?;
    }
    if !args.json {
        println!("{}", pulled.reference);
    }
    Ok(())
}

/// Pulls `image` (always asking the registry) into the node cache.
pub async fn pull_image(
    settings: &Settings,
    image: &str,
    progress: &dyn ProgressSink,
) -> anyhow::Result<PulledImage> {
    let reference: Reference = image.parse()?;
    let pulled = crate::image::puller(settings)?
        .pull(&reference, progress)
        .await?;
    if let Some(budget) = settings.cache_budget {
        crate::store::gc::collect(&settings.cache_dir, Some(budget)).await?;
    }
    Ok(pulled)
}
