//! Getting an image ready in containerd: from its own image record when
//! the rootfs snapshots are there (warm: no registry), otherwise pulled by
//! cvmd's registry client into containerd's content store, recorded with
//! `Images.Create`, and unpacked layer by layer (`Snapshots.Prepare` on the
//! parent chain ID, `Diff.Apply`, `Snapshots.Commit` as the chain ID), all
//! under a lease so containerd's gc keeps it until the record and its gc
//! labels hold it.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use futures_util::StreamExt;

use super::{
    gc_ref_content, ids, Containerd, ContainerdError, PullPath, PULL_LEASE_TTL, SNAPSHOTTER,
};
use crate::digest::Digest;
use crate::image::PullPolicy;
use crate::pull::{ProgressSink, PullEvent};
use crate::registry::client::ClientOptions;
use crate::registry::credentials::Credential;
use crate::registry::manifest::{self, ImageManifest, Manifest, Platform};
use crate::registry::{Reference, RegistryClient, RegistryError};

/// How one pull goes (the credential is for the transfer service to ask for).
enum Path {
    Transfer(Option<Credential>),
    Content,
}

/// One pull: cvmd's pull options, the containerd route, and the policy
/// this command asks for.
#[derive(Debug)]
pub struct PullRequest<'a> {
    pub image: &'a crate::image::PullOptions,
    pub route: &'a super::PullRoute,
    pub policy: PullPolicy,
}

/// An image ready in containerd.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub manifest_digest: Digest,
    /// The image config's bytes, as containerd stores them.
    pub config: Vec<u8>,
    /// The top layer's chain ID (None for an image without layers).
    pub chain_id: Option<Digest>,
    /// False when containerd had it all.
    pub pulled: bool,
    pub via: Via,
}

/// How an image got ready in containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Present,
    Transfer,
    Content,
}

impl Via {
    pub fn describe(self) -> &'static str {
        match self {
            Via::Present => "already there",
            Via::Transfer => "pulled by its transfer service",
            Via::Content => "pulled by cvmd into its content store",
        }
    }
}

impl Containerd {
    /// Makes `reference` ready in containerd according to the pull policy.
    pub async fn ensure(
        &self,
        req: &PullRequest<'_>,
        reference: &Reference,
        progress: &dyn ProgressSink,
    ) -> Result<Pulled, ContainerdError> {
        if req.policy != PullPolicy::Always {
            if let Some(ready) = self.present(reference, &req.image.platform).await? {
                tracing::info!(image = %reference, digest = %ready.manifest_digest, "image is in containerd");
                return Ok(ready);
            }
            if req.policy == PullPolicy::Never {
                return Err(ContainerdError::NotPresent {
                    image: reference.to_string(),
                    namespace: self.namespace.clone(),
                });
            }
        }
        let options = req
            .image
            .registry
            .client_options()
            .map_err(RegistryError::Credentials)?;
        let path = self.pull_path(req, reference, &options.keychain).await?;
        let lease = super::unique("cvmd-pull");
        debug_assert!(lease.starts_with(&super::pull_lease_prefix()));
        self.create_lease(&lease, Some(PULL_LEASE_TTL)).await?;
        let result = match path {
            Path::Transfer(credential) => {
                self.pull_by_transfer(
                    &lease,
                    reference,
                    req,
                    &options,
                    credential.as_ref(),
                    progress,
                )
                .await
            }
            Path::Content => {
                self.pull_by_content(&lease, reference, req, &options, progress)
                    .await
            }
        };
        // From here the image record and its gc labels hold everything.
        if let Err(e) = self.delete_lease(&lease).await {
            tracing::warn!(error = %e, lease, "cannot delete the pull's lease; containerd drops it within the hour");
        }
        result
    }

    /// Which way this pull goes, by the `containerd_pull` setting, this
    /// containerd's version and what the pull needs.
    async fn pull_path(
        &self,
        req: &PullRequest<'_>,
        reference: &Reference,
        keychain: &crate::registry::credentials::Keychain,
    ) -> Result<Path, ContainerdError> {
        if req.route.path == PullPath::Content {
            return Ok(Path::Content);
        }
        if !self.has_transfer_service() {
            if req.route.path == PullPath::Transfer {
                return Err(self.no_transfer());
            }
            tracing::debug!(version = %self.version, "containerd has no transfer service: cvmd fetches into its content store");
            return Ok(Path::Content);
        }
        // A credential helper is a program: off the async threads.
        let keychain = keychain.clone();
        let host = reference.registry.clone();
        let credential = tokio::task::spawn_blocking(move || keychain.lookup(&host))
            .await
            .map_err(|e| ContainerdError::Invalid {
                what: "the credential lookup".into(),
                why: e.to_string(),
            })?
            .map_err(RegistryError::Credentials)?
            .map(|(credential, _source)| credential);
        if let Some(why) = super::transfer::unsuitable(
            req,
            reference,
            credential.as_ref(),
            self.at_least(ids::RESOLVER_OPTIONS_VERSION),
        ) {
            if req.route.path == PullPath::Transfer {
                tracing::warn!(reason = %why, "CVMD_CONTAINERD_PULL=transfer, but the transfer service may not serve this pull");
            } else {
                tracing::info!(reason = %why, "pulling with cvmd's own client into containerd's content store");
                return Ok(Path::Content);
            }
        }
        Ok(Path::Transfer(credential))
    }

    /// The transfer path, then the image as containerd recorded it.
    async fn pull_by_transfer(
        &self,
        lease: &str,
        reference: &Reference,
        req: &PullRequest<'_>,
        options: &ClientOptions,
        credential: Option<&Credential>,
        progress: &dyn ProgressSink,
    ) -> Result<Pulled, ContainerdError> {
        let started = Instant::now();
        let not_unpacked = || ContainerdError::NotUnpacked {
            image: reference.to_string(),
            platform: req.image.platform.to_string(),
        };
        let outcome = match self
            .transfer_pull(lease, reference, req, credential, progress)
            .await
        {
            Ok(true) => self
                .present(reference, &req.image.platform)
                .await
                .and_then(|ready| ready.ok_or_else(not_unpacked)),
            Ok(false) if req.route.path == PullPath::Transfer => Err(self.no_transfer()),
            Ok(false) => {
                tracing::info!(
                    "containerd's transfer service is not enabled: cvmd fetches into its content store"
                );
                return self
                    .pull_by_content(lease, reference, req, options, progress)
                    .await;
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(mut ready) => {
                ready.pulled = true;
                ready.via = Via::Transfer;
                tracing::info!(digest = %ready.manifest_digest, elapsed_ms = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX), "pulled by containerd's transfer service");
                Ok(ready)
            }
            Err(e @ ContainerdError::NotUnpacked { .. }) if req.route.path == PullPath::Auto => {
                // Whatever blobs containerd fetched stay: the content path
                // resolves the manifest again and applies the layers.
                tracing::info!(reason = %e, "unpacking layer by layer instead");
                self.pull_by_content(lease, reference, req, options, progress)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    fn no_transfer(&self) -> ContainerdError {
        ContainerdError::NoTransfer {
            socket: self.socket.display().to_string(),
            version: self.version.clone(),
        }
    }

    /// The content path with a registry client of its own.
    async fn pull_by_content(
        &self,
        lease: &str,
        reference: &Reference,
        req: &PullRequest<'_>,
        options: &ClientOptions,
        progress: &dyn ProgressSink,
    ) -> Result<Pulled, ContainerdError> {
        let client = RegistryClient::new(options.clone())?;
        self.pull(lease, &client, reference, req, progress).await
    }

    /// The image as containerd has it, if its record, manifest, config and
    /// rootfs snapshot are all there.
    async fn present(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<Pulled>, ContainerdError> {
        let name = reference.to_string();
        let Some((manifest_digest, manifest)) = self.recorded_manifest(reference, platform).await?
        else {
            return Ok(None);
        };
        let Some(config) = self.read_small(&manifest.config.digest).await? else {
            return Ok(None);
        };
        let head = manifest::parse_config(&config, &manifest, &name)?;
        let chain_id = ids::chain_ids(&head.rootfs.diff_ids).pop();
        if let Some(chain) = &chain_id {
            if !self.has_snapshot(&chain.to_string()).await? {
                return Ok(None);
            }
        }
        Ok(Some(Pulled {
            manifest_digest,
            config,
            chain_id,
            pulled: false,
            via: Via::Present,
        }))
    }

    /// The platform's manifest of the image recorded as `reference`, if
    /// the record and the manifest are there.
    pub(super) async fn recorded_manifest(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<(Digest, ImageManifest)>, ContainerdError> {
        let name = reference.to_string();
        let request = GetImageRequest { name: name.clone() };
        let image = match ImagesClient::new(self.channel.clone())
            .get(self.req(request, None))
            .await
        {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(self.failed(&format!("looking up image {name}"))(s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(None);
        };
        self.stored_manifest(&target, platform, &name).await
    }

    /// The platform's image manifest an image record points at (through an
    /// index if it is one).
    async fn stored_manifest(
        &self,
        target: &Descriptor,
        platform: &Platform,
        name: &str,
    ) -> Result<Option<(Digest, ImageManifest)>, ContainerdError> {
        let digest = parse_digest(&target.digest, name)?;
        let Some(bytes) = self.read_small(&digest).await? else {
            return Ok(None);
        };
        match manifest::parse(&bytes, Some(&target.media_type), name)? {
            Manifest::Image(m) => Ok(Some((digest, m))),
            Manifest::Index(entries) => {
                let entry = manifest::select_platform(&entries, platform, name)?;
                let Some(bytes) = self.read_small(&entry.digest).await? else {
                    return Ok(None);
                };
                match manifest::parse(&bytes, entry.media_type().map(AsRef::as_ref), name)? {
                    Manifest::Image(m) => Ok(Some((entry.digest.clone(), m))),
                    Manifest::Index(_) => Err(RegistryError::Invalid {
                        what: name.to_string(),
                        why: "an index entry points at another index".into(),
                    }
                    .into()),
                }
            }
        }
    }

    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference, backend = "containerd"))]
    async fn pull(
        &self,
        lease: &str,
        client: &RegistryClient,
        reference: &Reference,
        req: &PullRequest<'_>,
        progress: &dyn ProgressSink,
    ) -> Result<Pulled, ContainerdError> {
        let started = Instant::now();
        let what = reference.to_string();
        let (manifest_digest, manifest_bytes, manifest) =
            super::fetch::resolve(client, reference, &req.image.platform).await?;
        let pinned = reference.with_digest(manifest_digest.clone());
        let config_digest = &manifest.config.digest;
        let config = match self.read_small(config_digest).await? {
            Some(bytes) => bytes,
            None => client
                .get_small_blob(&pinned, config_digest)
                .await?
                .to_vec(),
        };
        let head = manifest::parse_config(&config, &manifest, &what)?;
        let chains = ids::chain_ids(&head.rootfs.diff_ids);
        progress.event(PullEvent::Resolved {
            reference: what.clone(),
            digest: manifest_digest.clone(),
            platform: format!("{}/{}", head.os, head.architecture),
            layers: manifest.layers.len(),
            bytes: manifest.layers.iter().map(|l| l.size).sum(),
        });

        // The config keeps the rootfs snapshot alive, as containerd's own
        // unpacker labels it.
        let mut config_labels = HashMap::new();
        if let Some(top) = chains.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.to_string(),
            );
        }
        self.put_small(
            lease,
            config_digest,
            Bytes::from(config.clone()),
            config_labels,
        )
        .await?;

        // Layers already unpacked (this image before, or another sharing
        // them) cost nothing: no download, no apply.
        let mut unpacked = Vec::with_capacity(chains.len());
        for chain in &chains {
            unpacked.push(self.has_snapshot(&chain.to_string()).await?);
        }
        let mut downloads = Vec::new();
        for (layer, done) in manifest.layers.iter().zip(&unpacked) {
            if *done {
                progress.event(PullEvent::LayerDone {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    cached: true,
                });
            } else {
                downloads.push(self.fetch_layer(lease, client, &pinned, layer, progress));
            }
        }
        let results: Vec<Result<(), ContainerdError>> = futures_util::stream::iter(downloads)
            .buffer_unordered(req.image.concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;

        let mut parent = String::new();
        for (i, chain) in chains.iter().enumerate() {
            if !unpacked[i] {
                let layer = &manifest.layers[i];
                self.unpack_layer(lease, &parent, chain, layer, &head.rootfs.diff_ids[i])
                    .await?;
            }
            parent = chain.to_string();
        }

        let mut manifest_labels: HashMap<String, String> =
            [gc_ref_content("config", config_digest)].into();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let (k, v) = gc_ref_content(&format!("l.{i}"), &layer.digest);
            manifest_labels.insert(k, v);
        }
        self.put_small(
            lease,
            &manifest_digest,
            manifest_bytes.clone(),
            manifest_labels,
        )
        .await?;
        self.record_image(
            &what,
            Descriptor {
                media_type: manifest.media_type.clone(),
                digest: manifest_digest.to_string(),
                size: i64::try_from(manifest_bytes.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            },
        )
        .await?;
        let elapsed = started.elapsed();
        tracing::info!(digest = %manifest_digest, elapsed_ms = elapsed.as_millis().try_into().unwrap_or(u64::MAX), "pulled into containerd");
        progress.event(PullEvent::Done {
            reference: what,
            digest: manifest_digest.clone(),
            elapsed_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
        });
        Ok(Pulled {
            manifest_digest,
            config,
            chain_id: chains.last().cloned(),
            pulled: true,
            via: Via::Content,
        })
    }

    /// Writes a small blob unless containerd has it; labels it either way.
    async fn put_small(
        &self,
        lease: &str,
        digest: &Digest,
        bytes: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        if self.has_held_content(lease, digest).await? {
            self.set_labels(digest, labels).await
        } else {
            self.write_bytes(lease, digest, bytes, labels).await
        }
    }

    /// Creates the image record, or points an existing one at `target`.
    async fn record_image(&self, name: &str, target: Descriptor) -> Result<(), ContainerdError> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let what = format!("recording image {name}");
        let mut images = ImagesClient::new(self.channel.clone());
        let request = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match images.create(self.req(request, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let request = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                };
                images
                    .update(self.req(request, None))
                    .await
                    .map_err(self.failed(&what))?;
                Ok(())
            }
            Err(s) => Err(self.failed(&what)(s)),
        }
    }
}

fn parse_digest(s: &str, name: &str) -> Result<Digest, ContainerdError> {
    s.parse()
        .map_err(|e: crate::digest::DigestError| ContainerdError::Invalid {
            what: format!("the record of image {name}"),
            why: e.to_string(),
        })
}
