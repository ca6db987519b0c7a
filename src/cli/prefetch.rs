//! `cvmd prefetch IMAGE...`: pull images into the node cache ahead of the
//! workspaces that will use them (what the pre-pull DaemonSet runs), so
//! their first start on the node is a warm start.

use crate::backend::Backend;
use crate::config::Settings;
use crate::image::PullPolicy;
use crate::progress::PlainLines;
use crate::registry::Reference;

#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// Image references.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn prefetch(settings: &Settings, args: &PrefetchArgs) -> anyhow::Result<()> {
    // Into the cache the workspaces will read: cvmd's own, or the node's
    // containerd with CVMD_IMAGE_BACKEND=containerd (or auto finding it).
    let backend = Backend::select(settings).await?;
    let mut failed = Vec::new();
    for image in &args.images {
        let pulled = match image.parse::<Reference>() {
            Ok(reference) => pull(settings, &backend, &reference).await,
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
    if matches!(backend, Backend::Native) {
        // Sparing every image asked for: a prefetch that evicts what it
        // just fetched would be no prefetch.
        crate::image::keep_within_budget(
            settings,
            &args
                .images
                .iter()
                .filter_map(|i| i.parse::<Reference>().ok())
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
        )
        .await;
    }
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

/// Pulls (asking the registry for what the tag names now) and unpacks one
/// image; its reference pinned to the digest pulled.
async fn pull(
    settings: &Settings,
    backend: &Backend,
    reference: &Reference,
) -> anyhow::Result<String> {
    match backend {
        Backend::Native => Ok(crate::image::pull(settings, reference, true, &PlainLines)
            .await?
            .reference
            .to_string()),
        Backend::Containerd(_) => {
            let ready = backend
                .ensure(settings, reference, PullPolicy::Always, &PlainLines)
                .await?;
            Ok(reference.with_digest(ready.digest).to_string())
        }
    }
}
