//! One layer, from registry to layer cache: lock the layer (then its blob),
//! stream the blob from the network with resume and retries into the disk
//! side (`to_disk`), verify both digests, publish.

use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::to_disk::{self, Feed, Msg, ToDiskError};
use super::{blocking, ProgressSink, PullError, PullEvent, Puller};
use crate::registry::client::describe;
use crate::registry::manifest::Layer;
use crate::registry::{Reference, RegistryError};
use crate::store::layers::LayerMeta;
use crate::unpack::UnpackOptions;
use cvmd_digest::Digest;

/// Chunks in flight between the network and the disk, per layer: bounds
/// memory while keeping both sides busy. A chunk over HTTP/1.1 is up to
/// hyper's ~400 KiB read buffer, so 8 of them per layer, with 4 layers at
/// once, stay well inside the 64 MiB budget.
const CHANNEL_CHUNKS: usize = 8;
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl Puller {
    /// The content-only pull (`cvmd pull --no-unpack`): the blob into the
    /// store, verified and resumable, and nothing unpacked.
    #[tracing::instrument(name = "blob", skip_all, fields(digest = %layer.digest, size = layer.size))]
    pub(super) async fn fetch_blob(
        &self,
        reference: &Reference,
        layer: &Layer,
        progress: &dyn ProgressSink,
    ) -> Result<(), PullError> {
        let digest = &layer.digest;
        let done = |cached| PullEvent::LayerDone {
            digest: digest.clone(),
            size: layer.size,
            cached,
        };
        if self.store.has_blob(digest) {
            progress.event(done(true));
            return Ok(());
        }
        let what = format!("layer {digest} of {reference}");
        for round in 0..2 {
            let guard = self
                .store
                .lock_ingest(digest, || {
                    progress.event(PullEvent::LayerWaiting {
                        digest: digest.clone(),
                    })
                })
                .await?;
            if guard.already_stored() {
                progress.event(done(true));
                return Ok(());
            }
            let (size, w) = (layer.size, what.clone());
            let writer = blocking(move || guard.writer(size, &w)).await??;
            progress.event(PullEvent::LayerStarted {
                digest: digest.clone(),
                size: layer.size,
                resumed_from: writer.resumed_from(),
            });
            let (offset, resumed) = (writer.offset(), writer.resumed_from() > 0);
            let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
            // No prefix: nothing reads the stream but the blob writer, which
            // already hashed what is on disk.
            let disk = tokio::task::spawn_blocking(move || {
                to_disk::store_only(Feed::download(writer, None, rx))
            });
            let net = self.download(reference, layer, offset, tx, progress).await;
            let disk = disk.await.map_err(|e| PullError::Internal(e.to_string()))?;
            let writer = match (net, disk) {
                (Err(e), _) if !matches!(e, PullError::Internal(_)) => return Err(e),
                (_, Err(ToDiskError::Restarted)) if round == 0 => continue,
                (_, Err(e)) => return Err(e.in_context(&what).into()),
                (_, Ok(writer)) => writer,
            };
            match blocking(move || writer.commit()).await? {
                Ok(()) => {
                    progress.event(done(false));
                    return Ok(());
                }
                Err(crate::store::StoreError::DigestMismatch { .. }) if resumed && round == 0 => {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PullError::Internal(format!(
            "{what}: gave up after two attempts from the start"
        )))
    }

    #[tracing::instrument(name = "layer", skip_all, fields(digest = %layer.digest, size = layer.size))]
    pub(super) async fn fetch_layer(
        &self,
        reference: &Reference,
        layer: &Layer,
        diff_id: &Digest,
        estargz: bool,
        meter: std::sync::Arc<crate::unpack::ImageMeter>,
        progress: &dyn ProgressSink,
    ) -> Result<(), PullError> {
        let digest = &layer.digest;
        let done = |cached| PullEvent::LayerDone {
            digest: digest.clone(),
            size: layer.size,
            cached,
        };
        let waiting = || {
            progress.event(PullEvent::LayerWaiting {
                digest: digest.clone(),
            })
        };
        if self.layers.has(diff_id) {
            progress.event(done(true));
            return Ok(());
        }
        let layer_guard = self.layers.lock(diff_id, waiting).await?;
        if layer_guard.already_unpacked() {
            progress.event(done(true));
            return Ok(());
        }
        let what = format!("layer {digest} of {reference}");
        let opts = UnpackOptions {
            image: reference.to_string(),
            layer: digest.to_string(),
            max_unpacked_bytes: self.max_layer_bytes,
            preserve_ownership: self.preserve_ownership,
            image_meter: Some(meter),
            cache_reserve: self.cache_reserve,
            limits: Default::default(),
            skip_estargz_metadata: estargz,
        };
        // A resumed prefix that turns out corrupt, or a registry that
        // ignored a Range request, costs one fresh download.
        for round in 0..2 {
            let staging = layer_guard.staging()?;
            let dest = staging.root();
            let started = Instant::now();
            let (unpacked, cached_blob) = if self.store.has_blob(digest) {
                let path = self.store.blob_path(digest);
                let file = std::fs::File::open(&path).map_err(crate::store::io_err(&path))?;
                let (c, d, w, o) = (
                    layer.compression,
                    diff_id.clone(),
                    what.clone(),
                    opts.clone(),
                );
                let result =
                    blocking(move || to_disk::unpack(Feed::stored(file), c, &d, &dest, &o, &w))
                        .await?;
                (result, true)
            } else {
                let blob_guard = self.store.lock_ingest(digest, waiting).await?;
                if blob_guard.already_stored() {
                    // Another process downloaded it while we waited.
                    continue;
                }
                let (size, w) = (layer.size, what.clone());
                let writer = blocking(move || blob_guard.writer(size, &w)).await??;
                progress.event(PullEvent::LayerStarted {
                    digest: digest.clone(),
                    size: layer.size,
                    resumed_from: writer.resumed_from(),
                });
                let prefix = writer.prefix().map_err(PullError::Store)?;
                let offset = writer.offset();
                let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
                let (c, d, w, o) = (
                    layer.compression,
                    diff_id.clone(),
                    what.clone(),
                    opts.clone(),
                );
                let disk = tokio::task::spawn_blocking(move || {
                    to_disk::unpack(Feed::download(writer, prefix, rx), c, &d, &dest, &o, &w)
                });
                let net = self.download(reference, layer, offset, tx, progress).await;
                let disk = disk.await.map_err(|e| PullError::Internal(e.to_string()))?;
                match (net, disk) {
                    // The network's failure explains the truncated stream the
                    // unpacker saw.
                    (Err(e), _) if !matches!(e, PullError::Internal(_)) => return Err(e),
                    (_, result) => (result, false),
                }
            };
            let unpacked = match unpacked {
                Err(ToDiskError::Restarted) if round == 0 => continue,
                Err(e) => return Err(e.in_context(&what).into()),
                Ok(u) => u,
            };
            if let Some(writer) = unpacked.writer {
                let resumed = writer.resumed_from() > 0;
                match blocking(move || writer.commit()).await? {
                    Ok(()) => {}
                    Err(crate::store::StoreError::DigestMismatch { .. })
                        if resumed && round == 0 =>
                    {
                        tracing::warn!(%digest, "resumed download did not verify; downloading it again from the start");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let meta = LayerMeta {
                diff_id: diff_id.clone(),
                blob: digest.clone(),
                entries: unpacked.stats.entries,
                file_bytes: unpacked.stats.file_bytes,
            };
            blocking(move || staging.publish(&meta)).await??;
            tracing::info!(%diff_id, cached_blob, elapsed_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX), "layer ready");
            progress.event(done(cached_blob));
            return Ok(());
        }
        Err(PullError::Internal(format!(
            "{what}: gave up after two attempts from the start"
        )))
    }

    /// Streams the blob from `offset` into `tx`. A body cut short is resumed
    /// with a Range request, up to the retry budget; failed requests are
    /// retried by the client itself.
    async fn download(
        &self,
        reference: &Reference,
        layer: &Layer,
        mut offset: u64,
        tx: mpsc::Sender<Msg>,
        progress: &dyn ProgressSink,
    ) -> Result<(), PullError> {
        let policy = self.client.retry_policy().clone();
        let mut attempt = 0u32;
        let mut last_report = Instant::now();
        let disk_gone = || PullError::Internal("the layer's disk side stopped".into());
        while offset < layer.size {
            let failure = match self.client.get_blob(reference, &layer.digest, offset).await {
                Ok(blob) => {
                    if blob.offset == 0 && offset > 0 {
                        tx.send(Msg::Restart).await.map_err(|_| disk_gone())?;
                        return Err(disk_gone());
                    }
                    let mut body = blob.response.bytes_stream();
                    let mut cut = None;
                    while let Some(chunk) = body.next().await {
                        match chunk {
                            Ok(b) => {
                                if let Some(cap) = &self.bandwidth {
                                    cap.take(b.len()).await;
                                }
                                offset += b.len() as u64;
                                tx.send(Msg::Data(b)).await.map_err(|_| disk_gone())?;
                                if last_report.elapsed() >= PROGRESS_EVERY {
                                    last_report = Instant::now();
                                    progress.event(PullEvent::LayerProgress {
                                        digest: layer.digest.clone(),
                                        done: offset,
                                        total: layer.size,
                                    });
                                }
                            }
                            Err(e) => {
                                cut = Some(describe(&e));
                                break;
                            }
                        }
                    }
                    match cut {
                        None if offset >= layer.size => break,
                        None => RegistryError::Transfer {
                            what: format!("layer {}", layer.digest),
                            why: format!(
                                "the registry ended the body after {offset} of {} bytes",
                                layer.size
                            ),
                        },
                        Some(why) => RegistryError::Transfer {
                            what: format!("layer {}", layer.digest),
                            why,
                        },
                    }
                }
                // The client already spent its attempts on this request:
                // retrying here too would multiply them.
                Err(e) => return Err(e.into()),
            };
            if !failure.is_transient() || attempt + 1 >= policy.attempts {
                return Err(failure.into());
            }
            progress.event(PullEvent::LayerRetry {
                digest: layer.digest.clone(),
                attempt: attempt + 1,
                error: failure.to_string(),
            });
            tracing::warn!(digest = %layer.digest, offset, error = %failure, "layer download interrupted; resuming");
            tokio::time::sleep(policy.delay(attempt)).await;
            attempt += 1;
        }
        progress.event(PullEvent::LayerProgress {
            digest: layer.digest.clone(),
            done: offset,
            total: layer.size,
        });
        Ok(())
    }
}
