//! `cvmd pull IMAGE`.

use std::io::IsTerminal;

use anyhow::Context;

use crate::config::Settings;
use crate::progress::{JsonLines, PlainLines, TerminalBars};
use crate::pull::ProgressSink;
use crate::registry::Reference;

#[derive(Debug, clap::Args)]
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
        .or_else(|| settings.run.image.clone())
        .context("no image: give one as an argument or set CVMD_IMAGE")?;
    let progress: Box<dyn ProgressSink> = if args.json {
        Box::new(JsonLines)
    } else if std::io::stderr().is_terminal() {
        Box::new(TerminalBars::default())
    } else {
        Box::new(PlainLines)
    };
    let reference: Reference = image.parse()?;
    let pull = &settings.run.pull;
    let pulled = crate::image::pull(pull, &reference, !args.no_unpack, progress.as_ref()).await?;
    crate::image::keep_within_budget(pull, &[reference.to_string()]).await;
    if !args.json {
        println!("{}", pulled.reference);
    }
    Ok(())
}
