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
    let pulled = super::pull::pull_image(settings, image, &PlainLines).await?;
    tracing::info!(image = %pulled.reference, "image ready; booting the workspace is not implemented yet");
    Ok(())
}
