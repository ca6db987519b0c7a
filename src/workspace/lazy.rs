//! The background half of a lazy start: while the workspace runs on its
//! FUSE layers, read the prefetch files first, let the boot's own reads
//! settle (they would otherwise share the link with the whole image's
//! download, which made a lazy boot slower than a full pull on a slow
//! link, bench/lazy.sh), then pull the image whole
//! (the normal pull: every digest checked, each layer published to the
//! cache), point each layer at its published dir, and keep Status saying
//! how far it got.

use std::time::{Duration, Instant};

use crate::backend::ReadyImage;
use crate::image::PullOptions;
use crate::lazy::MountedLayer;
use crate::registry::Reference;
use crate::supervisor::state::StateHandle;

/// How often Status's image source is brought up to date.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// The whole-image download waits for the boot's reads to settle (no
/// chunk read for this long), so that it does not compete with them for
/// the link...
const SETTLED_AFTER: Duration = Duration::from_secs(1);
/// ...but not longer than this: a workspace that never stops reading
/// would otherwise never get its image.
const SETTLE_AT_MOST: Duration = Duration::from_secs(30);

/// Starts the completion of a lazily started workspace; `None` when it
/// was not started lazily. Abort the task at stop: a cut download resumes
/// at the next start, and nothing unverified was published.
pub fn complete(
    pull: &PullOptions,
    reference: &Reference,
    ready: &ReadyImage,
    layers: Vec<MountedLayer>,
    state: &StateHandle,
) -> Option<tokio::task::JoinHandle<()>> {
    if layers.is_empty() {
        return None;
    }
    let pull = pull.clone();
    let reference = reference.clone();
    let resolved = ready.lazily_resolved();
    let origin = ready.origin.clone();
    let state = state.clone();
    Some(tokio::spawn(async move {
        let began = Instant::now();
        let ticker = tokio::spawn(show_progress(origin, layers.clone(), state.clone()));
        prefetch(&layers).await;
        settle(&layers).await;
        // The image started, under the reference as asked for (the record
        // the next start looks up), even if the tag has moved since: the
        // mounts switch to these layers.
        let pulled = crate::image::pull_resolved(&pull, &reference, true, resolved, &state).await;
        ticker.abort();
        match pulled {
            Ok(_) => {
                switch_to_cache(&pull, &layers);
                let took = began.elapsed().as_secs_f64();
                tracing::info!(
                    took_s = took,
                    "lazy start: the whole image is now in the node cache"
                );
                state.set_image_source(&format!(
                    "registry, lazily; complete in cvmd's cache {took:.1} s after the start"
                ));
            }
            Err(e) => tracing::warn!(
                error = %crate::supervisor::termination::error_line(&anyhow::Error::from(e)),
                "lazy start: the background download failed; the workspace keeps reading on demand"
            ),
        }
        crate::memory::give_back_freed();
    }))
}

/// Reads the files each layer's prefetch landmark puts first (what the
/// image's author said a start needs), through the mounts: their chunks
/// land in the node's chunk cache before the workspace asks.
async fn prefetch(layers: &[MountedLayer]) {
    let paths: Vec<_> = layers.iter().flat_map(|l| l.prefetch.clone()).collect();
    if paths.is_empty() {
        return;
    }
    let n = paths.len();
    let read = tokio::task::spawn_blocking(move || {
        for path in paths {
            let read = std::fs::File::open(&path)
                .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()));
            if let Err(e) = read {
                tracing::debug!(path = %path.display(), error = %e, "prefetch read failed");
            }
        }
    })
    .await;
    if read.is_ok() {
        tracing::info!(
            files = n,
            "lazy start: the prefetch files are in the chunk cache"
        );
    }
}

/// Waits until no chunk was read for [`SETTLED_AFTER`] (the boot is
/// done with its first reads), at most [`SETTLE_AT_MOST`].
async fn settle(layers: &[MountedLayer]) {
    let reads = || {
        layers
            .iter()
            .map(|l| {
                let s = l.handle.stats();
                s.chunks_fetched + s.cache_hits
            })
            .sum::<u64>()
    };
    let began = Instant::now();
    let (mut last, mut quiet_since) = (reads(), Instant::now());
    while began.elapsed() < SETTLE_AT_MOST && quiet_since.elapsed() < SETTLED_AFTER {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = reads();
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
    }
}

/// Every layer serves from its published dir from now on.
fn switch_to_cache(pull: &PullOptions, layers: &[MountedLayer]) {
    let cache = match crate::store::layers::LayerCache::open(&pull.cache_dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "lazy start: cannot open the layer cache");
            return;
        }
    };
    for layer in layers {
        if let Err(e) = layer.handle.set_backing_dir(&cache.tree(&layer.diff_id)) {
            tracing::warn!(layer = %layer.diff_id, error = %e, "lazy start: the layer keeps reading on demand");
        }
    }
}

/// Keeps Status's image source saying how much was read on demand.
async fn show_progress(origin: String, layers: Vec<MountedLayer>, state: StateHandle) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tick.tick().await;
        state.set_image_source(&describe(&origin, &layers));
    }
}

fn describe(origin: &str, layers: &[MountedLayer]) -> String {
    let (mut present, mut total, mut fetched, mut failed) = (0, 0, 0, 0);
    for l in layers {
        let s = l.handle.stats();
        present += s.files_present;
        total += s.files_total;
        fetched += s.compressed_bytes_fetched;
        failed += s.failed_reads;
    }
    let mut text = format!(
        "{origin}; {present} of {total} files read, {:.1} MiB fetched on demand",
        fetched as f64 / f64::from(1 << 20)
    );
    if failed > 0 {
        text.push_str(&format!(", {failed} reads failed (see the log)"));
    }
    text
}
