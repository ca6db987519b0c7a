//! `cvmd run`: the supervisor's main job. Today it pulls the workspace
//! image; rootfs, boot and supervision arrive with the following stages.

use anyhow::Context;

use crate::config::Settings;
use crate::progress::PlainLines;

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let image = settings
        .image
        .as_deref()
        .context("no workspace image: set CVMD_IMAGE (or CODER_INNER_IMAGE)")?;
    let reference: crate::registry::Reference = image.parse()?;
    let ready =
        crate::image::ensure(settings, &reference, settings.pull_policy, &PlainLines).await?;
    tracing::info!(image = %reference, digest = %ready.record.manifest, pulled = ready.pulled, "image ready; booting the workspace is not implemented yet");
    Ok(())
}
