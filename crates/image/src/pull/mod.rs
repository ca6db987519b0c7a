//! Pulling an image into the content store: resolve the manifest (index ->
//! platform), fetch the config, and stream every layer to disk in parallel,
//! verified, resumable, once per node.

mod bandwidth;
mod layer;
mod pipe;
mod to_disk;

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use crate::registry::manifest::{self, ImageConfigHead, ImageManifest, Manifest, Platform};
use crate::registry::{Reference, RegistryClient, RegistryError};
use crate::store::images::ImageRecord;
use crate::store::layers::LayerCache;
use crate::store::{ContentStore, StoreError};
pub use bandwidth::Bandwidth;
use cvmd_digest::Digest;
pub use cvmd_progress::{NoProgress, ProgressSink, PullEvent};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] to_disk::ToDiskError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// An image's manifest (this platform's) and config, fetched, checked and
/// stored: what a pull resolves before its layers. A pull given one does
/// not ask the registry for them again.
#[derive(Debug, Clone)]
pub struct Head {
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfigHead,
}

#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference pinned to the manifest digest that was pulled.
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfigHead,
}

#[derive(Debug)]
pub struct Puller {
    pub client: Arc<RegistryClient>,
    pub store: ContentStore,
    pub layers: LayerCache,
    pub platform: Platform,
    /// Layers fetched and unpacked at once.
    pub concurrency: usize,
    /// How fast the layers may download together; `None`: the link's speed.
    pub bandwidth: Option<Arc<Bandwidth>>,
    /// Bound on one layer's unpacked size (a gzip bomb stops here); 0: none.
    pub max_layer_bytes: u64,
    /// Bound on the unpacked size of an image's layers together (those in
    /// the cache already by their recorded size); 0: none.
    pub max_image_bytes: u64,
    /// Space kept free on the cache's file system while unpacking.
    pub cache_reserve: Option<crate::unpack::Reserve>,
    /// Apply the layers' file owners (needs root).
    pub preserve_ownership: bool,
    /// Unpack layers into the layer cache (else only store their blobs).
    pub unpack: bool,
}

impl Puller {
    pub async fn pull(
        &self,
        reference: &Reference,
        progress: &dyn ProgressSink,
    ) -> Result<PulledImage, PullError> {
        self.pull_resolved(reference, None, progress).await
    }

    /// [`Puller::pull`], from `head` when it was resolved already (by
    /// [`Puller::head`], for the same reference).
    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference))]
    pub async fn pull_resolved(
        &self,
        reference: &Reference,
        head: Option<Head>,
        progress: &dyn ProgressSink,
    ) -> Result<PulledImage, PullError> {
        let started = Instant::now();
        // Held until the image record names everything this pull stores.
        let _no_gc = crate::store::lease::pull_lock(self.store.root()).await?;
        let Head {
            manifest_digest,
            manifest,
            config,
        } = match head {
            Some(head) => head,
            None => self.head(reference).await?,
        };
        let pinned = reference.with_digest(manifest_digest.clone());
        progress.event(PullEvent::Resolved {
            reference: reference.to_string(),
            digest: manifest_digest.clone(),
            platform: format!("{}/{}", config.os, config.architecture),
            layers: manifest.layers.len(),
            bytes: manifest.layers.iter().map(|l| l.size).sum(),
        });
        // Collected first: a closure inside the stream would make this
        // future !Send (rustc cannot prove the closure general enough).
        let mut fetches = Vec::with_capacity(manifest.layers.len());
        let pinned_ref = &pinned;
        let meter = Arc::new(crate::unpack::ImageMeter::new(self.max_image_bytes));
        if self.unpack {
            // Else a failed pull retried would admit one more layer each
            // time: the layers it kept are part of the image too.
            for diff_id in &config.rootfs.diff_ids {
                if let Some(cached) = self.layers.meta(diff_id) {
                    meter.add_cached(cached.file_bytes);
                }
            }
        }
        // eStargz layers unpack without their TOC and landmark files.
        let estargz = match self.store.read_blob(&manifest_digest) {
            Ok(raw) => crate::estargz::estargz_layers(&raw),
            Err(_) => Vec::new(),
        };
        for (i, (layer, diff_id)) in manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .enumerate()
        {
            let pinned = pinned_ref;
            let meter = Arc::clone(&meter);
            let estargz = estargz.get(i).copied().unwrap_or(false);
            fetches.push(async move {
                if self.unpack {
                    self.fetch_layer(pinned, layer, diff_id, estargz, meter, progress)
                        .await
                } else {
                    self.fetch_blob(pinned, layer, progress).await
                }
            });
        }
        // Layers' bytes go to disk while the pull goes on, instead of all at
        // the flush that makes each durable.
        let writeback = crate::store::writeback::Writeback::behind(self.store.root());
        // Every layer runs to its end even when one fails: dropping a layer's
        // future mid-unpack would leave its blocking unpacker writing into a
        // staging dir being removed. The good layers stay cached.
        let results: Vec<Result<(), PullError>> = futures_util::stream::iter(fetches)
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        drop(writeback);
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let record = ImageRecord::new(reference, &manifest_digest, &manifest, &config);
        self.store.images().save(&record)?;
        let elapsed = started.elapsed();
        tracing::info!(digest = %manifest_digest, elapsed_ms = elapsed.as_millis().try_into().unwrap_or(u64::MAX), "pulled");
        progress.event(PullEvent::Done {
            reference: reference.to_string(),
            digest: manifest_digest.clone(),
            elapsed_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
        });
        Ok(PulledImage {
            reference: pinned,
            manifest_digest,
            manifest,
            config,
        })
    }

    /// The manifest (this platform's) and config of `reference`, fetched,
    /// checked and stored as a pull does, without any layer: what a lazy
    /// start needs to decide which layers it can serve before they are
    /// downloaded.
    pub async fn head(&self, reference: &Reference) -> Result<Head, PullError> {
        let (manifest_digest, manifest) = self.resolve(reference).await?;
        let config = self
            .config(&reference.with_digest(manifest_digest.clone()), &manifest)
            .await?;
        Ok(Head {
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
