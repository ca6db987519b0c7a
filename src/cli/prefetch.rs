//! `cvmd prefetch IMAGE...`: pull images into the node cache ahead of the
//! workspaces that will use them (what the pre-pull DaemonSet runs), so
//! their first start on the node is a warm start.

use crate::backend::Backend;
use crate::config::Settings;
use crate::progress::PlainLines;
use crate::registry::Reference;

#[derive(Debug, clap::Args)]
pub struct PrefetchArgs {
    /// Image references.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn prefetch(settings: &Settings, args: &PrefetchArgs) -> anyhow::Result<()> {
    let pull = &settings.run.pull;
    // Into the cache the workspaces will read: cvmd's own, or the node's
    // containerd with CVMD_IMAGE_BACKEND=containerd (or auto finding it).
    let backend = Backend::select(&settings.run.backend).await?;
    let mut failed = Vec::new();
    for image in &args.images {
        // Asking the registry for what the tag names now; printed pinned
        // to the digest pulled.
        let pulled = match image.parse::<Reference>() {
            Ok(reference) => backend
                .prefetch(pull, &reference, &PlainLines)
                .await
                .map(|digest| reference.with_digest(digest).to_string())
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        match pulled {
            Ok(reference) => println!("{reference}"),
            // One bad image must not keep the others from the node.
            Err(e) => {
                eprintln!("cvmd: prefetch {image}: {}", super::error_line(&e));
                failed.push(image.as_str());
            }
        }
    }
    // Sparing every image asked for: a prefetch that evicts what it just
    // fetched would be no prefetch.
    let spare: Vec<String> = args
        .images
        .iter()
        .filter_map(|i| i.parse::<Reference>().ok())
        .map(|r| r.to_string())
        .collect();
    backend.keep_within_budget(pull, &spare).await;
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} images failed: {}",
            failed.len(),
            args.images.len(),
            failed.join(", ")
        )
    }
}
