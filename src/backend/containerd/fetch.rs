//! The registry side of a containerd pull: cvmd's own client (and
//! credentials) resolves the manifest and streams each layer blob into
//! containerd's content store.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{Containerd, ContainerdError};
use crate::digest::Digest;
use crate::pull::{ProgressSink, PullEvent};
use crate::registry::manifest::{self, ImageManifest, Layer, Manifest, Platform};
use crate::registry::{Reference, RegistryClient, RegistryError};

impl Containerd {
    /// Streams one layer blob from the registry into containerd.
    pub(super) async fn fetch_layer(
        &self,
        lease: &str,
        client: &RegistryClient,
        reference: &Reference,
        layer: &Layer,
        progress: &dyn ProgressSink,
    ) -> Result<(), ContainerdError> {
        let digest = &layer.digest;
        if !self.has_held_content(lease, digest).await? {
            progress.event(PullEvent::LayerStarted {
                digest: digest.clone(),
                size: layer.size,
                resumed_from: 0,
            });
            // A cut download starts over from byte 0: its ingest was
            // aborted with it (resuming into a kept ingest is left for later).
            let policy = client.retry_policy();
            let mut attempt = 1;
            loop {
                match self
                    .stream_blob(lease, client, reference, layer, progress)
                    .await
                {
                    Ok(()) => break,
                    Err(ContainerdError::Registry(e))
                        if e.is_transient() && attempt < policy.attempts =>
                    {
                        progress.event(PullEvent::LayerRetry {
                            digest: digest.clone(),
                            attempt,
                            error: e.to_string(),
                        });
                        tokio::time::sleep(policy.delay(attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        progress.event(PullEvent::LayerDone {
            digest: digest.clone(),
            size: layer.size,
            cached: false,
        });
        Ok(())
    }

    pub(super) async fn stream_blob(
        &self,
        lease: &str,
        client: &RegistryClient,
        reference: &Reference,
        layer: &Layer,
        progress: &dyn ProgressSink,
    ) -> Result<(), ContainerdError> {
        let digest = &layer.digest;
        let blob = client.get_blob(reference, digest, 0).await?;
        let host = blob.host.clone();
        let what = format!("blob {digest} of {reference}");
        let body = blob.response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| {
                ContainerdError::Registry(RegistryError::Transfer {
                    what: what.clone(),
                    why: format!("{host}: {}", crate::registry::client::describe(&e)),
                })
            })
        });
        let on_bytes = |done| {
            progress.event(PullEvent::LayerProgress {
                digest: digest.clone(),
                done,
                total: layer.size,
            })
        };
        self.write(
            lease,
            digest,
            layer.size,
            HashMap::new(),
            Box::pin(body),
            &on_bytes,
        )
        .await
    }
}

/// The platform's manifest of `reference` from its registry: digest, the
/// bytes as sent (containerd stores them under that digest) and parsed.
pub(super) async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
) -> Result<(Digest, Bytes, ImageManifest), ContainerdError> {
    let what = reference.to_string();
    let raw = client
        .get_manifest(reference, &reference.manifest_key())
        .await?;
    if let Some(pinned) = &reference.digest {
        check_digest(&raw.digest, pinned, &what)?;
    }
    match manifest::parse(&raw.bytes, raw.media_type.as_deref(), &what)? {
        Manifest::Image(m) => Ok((raw.digest, raw.bytes, m)),
        Manifest::Index(entries) => {
            let entry = manifest::select_platform(&entries, platform, &what)?;
            let what = format!("{what} ({platform})");
            let child_ref = reference.with_digest(entry.digest.clone());
            let child = client
                .get_manifest(&child_ref, &entry.digest.to_string())
                .await?;
            check_digest(&child.digest, &entry.digest, &what)?;
            match manifest::parse(&child.bytes, child.media_type.as_deref(), &what)? {
                Manifest::Image(m) => Ok((child.digest, child.bytes, m)),
                Manifest::Index(_) => Err(RegistryError::Invalid {
                    what,
                    why: "an index entry points at another index".into(),
                }
                .into()),
            }
        }
    }
}

fn check_digest(actual: &Digest, expected: &Digest, what: &str) -> Result<(), RegistryError> {
    if actual == expected {
        return Ok(());
    }
    Err(RegistryError::DigestMismatch {
        what: format!("manifest of {what}"),
        expected: expected.clone(),
        actual: actual.clone(),
    })
}
