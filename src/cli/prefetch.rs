//! `cvmd prefetch IMAGE...`: pull images into the node cache ahead of the
//! workspaces that will use them (what the pre-pull DaemonSet runs), so
//! their first start on the node is a warm start.

use crate::config::Settings;
use crate::progress::PlainLines;

#[derive(clap::Args)]
pub struct PrefetchArgs {
    /// Image references.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn prefetch(settings: &Settings, args: &PrefetchArgs) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for image in &args.images {
        let pulled = match image.parse() {
            Ok(reference) => crate::image::pull(settings, &reference, true, &PlainLines)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        match pulled {
            Ok(pulled) => println!("{}", pulled.reference),
            // One bad image must not keep the others from the node.
            Err(e) => {
                eprintln!("cvmd: prefetch {image}: {}", super::error_line(&e));
                failed.push(image.as_str());
            }
        }
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
