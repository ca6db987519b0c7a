//! `cvmd prefetch IMAGE...`: pull images into the node cache ahead of the
//! workspaces that will use them, so their first start on the node is a
//! warm start. With `--every`, it is what the prefetch DaemonSet runs: a
//! round now and one per interval until SIGTERM, serving the cache's
//! metrics on CVMD_METRICS_ADDR.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::backend::Backend;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::progress::PlainLines;
use crate::pull::{ProgressSink, PullEvent};
use crate::registry::Reference;

#[derive(Debug, clap::Args)]
pub struct PrefetchArgs {
    /// Image references.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Keep running: a round now, then one every SECONDS until SIGTERM or
    /// SIGINT (exit 0); a failed round is retried at the next one. With
    /// CVMD_METRICS_ADDR, serves the cache's and the rounds' metrics.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub every: Option<u64>,
}

pub async fn prefetch(settings: &Settings, args: &PrefetchArgs) -> anyhow::Result<()> {
    // Into the cache the workspaces will read: cvmd's own, or the node's
    // containerd with CVMD_IMAGE_BACKEND=containerd (or auto finding it).
    let backend = Backend::select(&settings.run.backend).await?;
    let Some(every) = args.every else {
        let failed = round(settings, &backend, &args.images, &Counted::new(None)).await;
        return outcome(&failed, args.images.len());
    };
    let metrics = Arc::new(Metrics::new());
    if matches!(backend, Backend::Native) {
        let pull = &settings.run.pull;
        metrics.watch_cache(pull.cache_dir.clone(), pull.cache_budget);
    }
    let _server = match settings.run.api.metrics_addr {
        Some(addr) => Some(crate::metrics::http::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let progress = Counted::new(Some(&metrics));
    loop {
        // A signal mid-round ends it there: a cut download resumes at the
        // next start, and nothing unverified was published.
        let failed = tokio::select! {
            failed = round(settings, &backend, &args.images, &progress) => failed,
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        metrics.prefetch_round(failed.len());
        if let Err(e) = outcome(&failed, args.images.len()) {
            eprintln!("cvmd: prefetch: {e}; next round in {every} s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// Pulls every image, then keeps the cache within its budget; the images
/// that failed.
async fn round<'a>(
    settings: &Settings,
    backend: &Backend,
    images: &'a [String],
    progress: &Counted<'_>,
) -> Vec<&'a str> {
    let pull = &settings.run.pull;
    let mut failed = Vec::new();
    for image in images {
        // Asking the registry for what the tag names now; printed pinned
        // to the digest pulled.
        let began = Instant::now();
        let pulled = match image.parse::<Reference>() {
            Ok(reference) => backend
                .prefetch(pull, &reference, progress)
                .await
                .map(|digest| reference.with_digest(digest).to_string())
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        match pulled {
            Ok(reference) => {
                progress.pulled(began.elapsed());
                println!("{reference}");
            }
            // One bad image must not keep the others from the node.
            Err(e) => {
                eprintln!("cvmd: prefetch {image}: {}", super::error_line(&e));
                failed.push(image.as_str());
            }
        }
    }
    // Sparing every image asked for: a prefetch that evicts what it just
    // fetched would be no prefetch.
    let spare: Vec<String> = images
        .iter()
        .filter_map(|i| i.parse::<Reference>().ok())
        .map(|r| r.to_string())
        .collect();
    backend.keep_within_budget(pull, &spare).await;
    failed
}

fn outcome(failed: &[&str], asked: usize) -> anyhow::Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} of {asked} images failed: {}",
        failed.len(),
        failed.join(", ")
    )
}

/// Counts each layer into the metrics (with `--every`), then prints it as
/// a plain line.
struct Counted<'a> {
    metrics: Option<&'a Metrics>,
    /// A layer was downloaded since the last `pulled`: the image's time
    /// then goes into the pull-duration histogram, as a workspace's does.
    fetched: AtomicBool,
}

impl<'a> Counted<'a> {
    fn new(metrics: Option<&'a Metrics>) -> Self {
        Counted {
            metrics,
            fetched: AtomicBool::new(false),
        }
    }

    /// One image is in the cache, `took` after it was asked for.
    fn pulled(&self, took: Duration) {
        if self.fetched.swap(false, Ordering::Relaxed) {
            if let Some(m) = self.metrics {
                m.pulled(took);
            }
        }
    }
}

impl std::fmt::Debug for Counted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counted")
    }
}

impl ProgressSink for Counted<'_> {
    fn event(&self, event: PullEvent) {
        if let PullEvent::LayerDone { cached: false, .. } = event {
            self.fetched.store(true, Ordering::Relaxed);
        }
        if let Some(m) = self.metrics {
            m.pull_event(&event);
        }
        PlainLines.event(event);
    }
}
