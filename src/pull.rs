//! Pulling an image into the content store: resolve the manifest (index ->
//! platform), fetch the config, and stream every layer to disk in parallel,
//! verified, resumable, once per node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::registry::client::describe;
use crate::registry::manifest::{self, ImageConfigHead, ImageManifest, Layer, Manifest, Platform};
use crate::registry::{Reference, RegistryClient, RegistryError};
use crate::store::{BlobWriter, ContentStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a pull reports as it goes; one JSON object each with `--json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    Resolved {
        reference: String,
        digest: Digest,
        platform: String,
        layers: usize,
        bytes: u64,
    },
    LayerWaiting {
        digest: Digest,
    },
    LayerStarted {
        digest: Digest,
        size: u64,
        resumed_from: u64,
    },
    LayerProgress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    LayerRetry {
        digest: Digest,
        attempt: u32,
        error: String,
    },
    LayerDone {
        digest: Digest,
        size: u64,
        cached: bool,
    },
    Done {
        reference: String,
        digest: Digest,
        elapsed_ms: u64,
    },
}

pub trait ProgressSink: Send + Sync {
    fn event(&self, event: PullEvent);
}

/// Drops every event.
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn event(&self, _: PullEvent) {}
}

#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference pinned to the manifest digest that was pulled.
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfigHead,
}

pub struct Puller {
    pub client: Arc<RegistryClient>,
    pub store: ContentStore,
    pub platform: Platform,
    /// Layers downloaded at once.
    pub concurrency: usize,
}

/// Chunks in flight between the network and the disk writer, per layer:
/// bounds memory while keeping both sides busy.
const CHANNEL_CHUNKS: usize = 16;
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

impl Puller {
    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference))]
    pub async fn pull(
        &self,
        reference: &Reference,
        progress: &dyn ProgressSink,
    ) -> Result<PulledImage, PullError> {
        let started = Instant::now();
        let (manifest_digest, manifest) = self.resolve(reference).await?;
        let pinned = reference.with_digest(manifest_digest.clone());
        let config = self.config(&pinned, &manifest).await?;
        progress.event(PullEvent::Resolved {
            reference: reference.to_string(),
            digest: manifest_digest.clone(),
            platform: format!("{}/{}", config.os, config.architecture),
            layers: manifest.layers.len(),
            bytes: manifest.layers.iter().map(|l| l.size).sum(),
        });
        futures_util::stream::iter(
            manifest
                .layers
                .iter()
                .map(|layer| self.fetch_layer(&pinned, layer, progress)),
        )
        .buffer_unordered(self.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
        let elapsed = started.elapsed();
        tracing::info!(digest = %manifest_digest, elapsed_ms = elapsed.as_millis() as u64, "pulled");
        progress.event(PullEvent::Done {
            reference: reference.to_string(),
            digest: manifest_digest.clone(),
            elapsed_ms: elapsed.as_millis() as u64,
        });
        Ok(PulledImage {
            reference: pinned,
            manifest_digest,
            manifest,
            config,
        })
    }

    /// Follows an index to this platform's manifest; every manifest fetched
    /// by digest is checked against that digest and stored.
    async fn resolve(&self, reference: &Reference) -> Result<(Digest, ImageManifest), PullError> {
        let what = reference.to_string();
        let raw = self
            .client
            .get_manifest(reference, &reference.manifest_key())
            .await?;
        if let Some(pinned) = &reference.digest {
            check_digest(&raw.digest, pinned, &what)?;
        }
        let parsed = manifest::parse(&raw.bytes, raw.media_type.as_deref(), &what)?;
        self.store.put_small(&raw.digest, &raw.bytes, &what)?;
        match parsed {
            Manifest::Image(m) => Ok((raw.digest, m)),
            Manifest::Index(entries) => {
                let entry = manifest::select_platform(&entries, &self.platform, &what)?;
                let child_ref = reference.with_digest(entry.digest.clone());
                let what = format!("{what} ({})", self.platform);
                let child = self
                    .client
                    .get_manifest(&child_ref, &entry.digest.to_string())
                    .await?;
                check_digest(&child.digest, &entry.digest, &what)?;
                match manifest::parse(&child.bytes, child.media_type.as_deref(), &what)? {
                    Manifest::Image(m) => {
                        self.store.put_small(&child.digest, &child.bytes, &what)?;
                        Ok((child.digest, m))
                    }
                    Manifest::Index(_) => Err(RegistryError::Invalid {
                        what,
                        why: "an index entry points at another index".into(),
                    }
                    .into()),
                }
            }
        }
    }

    async fn config(
        &self,
        reference: &Reference,
        manifest: &ImageManifest,
    ) -> Result<ImageConfigHead, PullError> {
        let digest = &manifest.config.digest;
        let bytes = if self.store.has_blob(digest) {
            self.store.read_blob(digest)?
        } else {
            let bytes = self.client.get_small_blob(reference, digest).await?;
            self.store
                .put_small(digest, &bytes, &format!("config of {reference}"))?;
            bytes.to_vec()
        };
        Ok(manifest::parse_config(
            &bytes,
            manifest,
            &reference.to_string(),
        )?)
    }

    #[tracing::instrument(name = "layer", skip_all, fields(digest = %layer.digest, size = layer.size))]
    async fn fetch_layer(
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
        // A resumed prefix that turns out corrupt costs one fresh download.
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
            let resumed = writer.resumed_from() > 0;
            progress.event(PullEvent::LayerStarted {
                digest: digest.clone(),
                size: layer.size,
                resumed_from: writer.resumed_from(),
            });
            let writer = self.download(reference, layer, writer, progress).await?;
            match blocking(move || writer.commit()).await? {
                Ok(()) => {
                    progress.event(done(false));
                    return Ok(());
                }
                Err(StoreError::DigestMismatch { .. }) if resumed && round == 0 => {
                    tracing::warn!(%digest, "resumed download did not verify; downloading it again from the start");
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the second round always returns")
    }

    /// Streams the blob into `writer`, resuming with Range requests after
    /// cuts and retrying transient failures with backoff.
    async fn download(
        &self,
        reference: &Reference,
        layer: &Layer,
        writer: BlobWriter,
        progress: &dyn ProgressSink,
    ) -> Result<BlobWriter, PullError> {
        enum Msg {
            Data(bytes::Bytes),
            Restart,
        }
        let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_CHUNKS);
        let mut offset = writer.offset();
        // The disk side: writes and hashes on a blocking thread.
        let disk = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Data(b) => writer.write(&b)?,
                    Msg::Restart => writer.restart()?,
                }
            }
            writer.flush()?;
            Ok::<_, StoreError>(writer)
        });
        let policy = self.client.retry_policy().clone();
        let mut attempt = 0u32;
        let mut last_report = Instant::now();
        let net: Result<(), PullError> = async {
            while offset < layer.size {
                let failure = match self.client.get_blob(reference, &layer.digest, offset).await {
                    Ok(blob) => {
                        if blob.offset == 0 && offset > 0 {
                            tx.send(Msg::Restart).await.map_err(|_| writer_gone())?;
                            offset = 0;
                        }
                        let mut body = blob.response.bytes_stream();
                        let mut cut = None;
                        while let Some(chunk) = body.next().await {
                            match chunk {
                                Ok(b) => {
                                    offset += b.len() as u64;
                                    tx.send(Msg::Data(b)).await.map_err(|_| writer_gone())?;
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
                                why: format!("the registry ended the body after {offset} of {} bytes", layer.size),
                            },
                            Some(why) => RegistryError::Transfer {
                                what: format!("layer {}", layer.digest),
                                why,
                            },
                        }
                    }
                    Err(e) => e,
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
            Ok(())
        }
        .await;
        drop(tx);
        let written = disk.await.map_err(|e| PullError::Internal(e.to_string()))?;
        // The disk error explains a closed channel better than the net side.
        let writer = written?;
        net?;
        progress.event(PullEvent::LayerProgress {
            digest: layer.digest.clone(),
            done: writer.offset(),
            total: layer.size,
        });
        Ok(writer)
    }
}

fn writer_gone() -> PullError {
    PullError::Internal("the blob writer stopped".into())
}

fn check_digest(actual: &Digest, expected: &Digest, what: &str) -> Result<(), RegistryError> {
    if actual == expected {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            what: format!("manifest of {what}"),
            expected: expected.clone(),
            actual: actual.clone(),
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Internal(e.to_string()))
}
