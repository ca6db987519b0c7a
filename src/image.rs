//! Getting an image ready in the node cache: from the local record when it
//! is complete (a warm start costs no network), otherwise by pulling, as the
//! pull policy says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::pull::{Head, ProgressSink, PullError, Puller};
use crate::registry::client::{ClientOptions, RetryPolicy};
use crate::registry::credentials::{CredentialError, CredentialSource, Keychain};
use crate::registry::manifest::Platform;
use crate::registry::{Reference, RegistryClient, RegistryError};
use crate::store::images::ImageRecord;
use crate::store::layers::LayerCache;
use crate::store::{ContentStore, StoreError};

/// Kubernetes' image pull policies, with its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Always" | "always" => Ok(PullPolicy::Always),
            "IfNotPresent" | "if-not-present" => Ok(PullPolicy::IfNotPresent),
            "Never" | "never" => Ok(PullPolicy::Never),
            _ => Err(format!("{s:?} is not one of Always, IfNotPresent, Never")),
        }
    }
}

/// How cvmd's own registry client reaches registries (the native backend,
/// and the containerd backend's content path).
#[derive(Debug, Clone)]
pub struct RegistryAccess {
    /// A `.dockerconfigjson` / `.dockercfg`, or a path to one.
    pub pull_secret: Option<String>,
    pub docker_config: PathBuf,
    pub extra_certs: Vec<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub mirrors: HashMap<String, Vec<String>>,
    /// Attempts per request.
    pub retries: u32,
}

impl RegistryAccess {
    /// Registry client options, with the credential sources in the order
    /// they are consulted: the pull secret first, then the docker config.
    /// Read at each pull, so a rotated secret is seen by the next one.
    pub fn client_options(&self) -> Result<ClientOptions, CredentialError> {
        let mut sources = Vec::new();
        if let Some(secret) = &self.pull_secret {
            sources.push(CredentialSource::from_pull_secret(secret)?);
        }
        sources.push(CredentialSource::from_docker_config(&self.docker_config)?);
        Ok(ClientOptions {
            insecure_registries: self.insecure_registries.clone(),
            extra_ca_paths: self.extra_certs.clone(),
            mirrors: self.mirrors.clone(),
            keychain: Keychain {
                sources,
                helper_path: None,
            },
            retry: RetryPolicy {
                attempts: self.retries,
                ..RetryPolicy::default()
            },
        })
    }
}

/// Where images are pulled from and into, and within which bounds.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The node cache.
    pub cache_dir: PathBuf,
    pub registry: RegistryAccess,
    pub platform: Platform,
    /// When to ask the registry (a command may ask for another).
    pub policy: PullPolicy,
    /// Layers downloaded at once.
    pub concurrency: usize,
    /// Bytes per second this process's layer downloads use together; 0:
    /// the link's speed.
    pub bandwidth: u64,
    pub max_layer_size: u64,
    pub max_image_size: u64,
    pub cache_reserve: crate::unpack::Reserve,
    /// Least recently used images go beyond this size, after a pull.
    pub cache_budget: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} is not in the node cache and the pull policy is Never: prefetch it (cvmd prefetch) or allow pulls")]
    NotCached(String),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Credentials(#[from] crate::registry::credentials::CredentialError),
    #[error(transparent)]
    CacheFs(#[from] crate::store::fs_check::CacheFsError),
}

#[derive(Debug)]
pub struct CachedImage {
    pub record: ImageRecord,
    /// False when everything came from the cache without asking a registry.
    pub pulled: bool,
}

/// A puller configured by `settings`.
fn puller(settings: &PullOptions) -> Result<Puller, ImageError> {
    crate::store::fs_check::check(&settings.cache_dir)?;
    let client = RegistryClient::new(settings.registry.client_options()?)?;
    Ok(Puller {
        client: Arc::new(client),
        store: ContentStore::open(&settings.cache_dir)?,
        layers: LayerCache::open(&settings.cache_dir)?,
        max_layer_bytes: settings.max_layer_size,
        max_image_bytes: settings.max_image_size,
        cache_reserve: Some(settings.cache_reserve),
        preserve_ownership: nix::unistd::geteuid().is_root(),
        platform: settings.platform.clone(),
        concurrency: settings.concurrency,
        bandwidth: crate::pull::Bandwidth::new(settings.bandwidth).map(Arc::new),
        unpack: true,
    })
}

/// Pulls `reference` from its registry into the node cache (unpacking its
/// layers unless `unpack` is false). The one pull path of `pull`,
/// `prefetch` and `run`; each keeps the cache within its budget afterwards
/// ([`keep_within_budget`]), once what it pulled is protected.
pub async fn pull(
    settings: &PullOptions,
    reference: &Reference,
    unpack: bool,
    progress: &dyn ProgressSink,
) -> Result<crate::pull::PulledImage, ImageError> {
    pull_resolved(settings, reference, unpack, None, progress).await
}

/// [`pull`], from what [`head`] resolved already when there is that:
/// neither the manifest nor a token is asked for again.
pub async fn pull_resolved(
    settings: &PullOptions,
    reference: &Reference,
    unpack: bool,
    resolved: Option<Resolved>,
    progress: &dyn ProgressSink,
) -> Result<crate::pull::PulledImage, ImageError> {
    let mut puller = puller(settings)?;
    puller.unpack = unpack;
    let head = resolved.map(|r| {
        puller.client = r.client;
        r.head
    });
    Ok(puller.pull_resolved(reference, head, progress).await?)
}

/// An image's manifest and config, checked and stored, with the client
/// that fetched them (and holds the registry's token).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub client: Arc<RegistryClient>,
    pub head: Head,
}

/// Resolves `reference` without pulling its layers: a lazy start reads
/// its layers' TOCs and spans with the client, and a pull that follows
/// starts from it ([`pull_resolved`]).
pub async fn head(settings: &PullOptions, reference: &Reference) -> Result<Resolved, ImageError> {
    let puller = puller(settings)?;
    let head = puller.head(reference).await?;
    Ok(Resolved {
        client: puller.client,
        head,
    })
}

/// Collects garbage down to the cache budget, if one is set, sparing the
/// images in `spare` (what this command just pulled) beside everything
/// leased. Never fails its caller: a gc that cannot run is a warning, and
/// the next one catches up.
pub async fn keep_within_budget(settings: &PullOptions, spare: &[String]) {
    let dir = settings.cache_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::lazy::keep_chunks_within(&dir, crate::lazy::CHUNK_BUDGET)
    })
    .await;
    let Some(budget) = settings.cache_budget else {
        return;
    };
    if let Err(e) =
        crate::store::gc::collect_sparing(&settings.cache_dir, Some(budget), spare).await
    {
        tracing::warn!(error = %e, "cannot keep the node cache within its budget (CVMD_CACHE_BUDGET); the next gc will");
    }
}

/// The cached record of `reference` if every layer it names is unpacked.
pub fn cached(
    settings: &PullOptions,
    reference: &Reference,
) -> Result<Option<ImageRecord>, ImageError> {
    let store = ContentStore::open(&settings.cache_dir)?;
    let layers = LayerCache::open(&settings.cache_dir)?;
    let images = store.images();
    let key = reference.to_string();
    Ok(images
        .load(&key)?
        .filter(|r| r.layers.iter().all(|l| layers.has(&l.diff_id)) && store.has_blob(&r.config))
        .inspect(|_| images.touch(&key)))
}

/// Makes `reference` ready in the cache according to `policy` and takes the
/// lease `lease_name` on its layers, all under the shared side of the gc
/// lock: no gc can run between the image being found (or pulled) and its
/// layers being leased, so a start never loses its image to a budget.
pub async fn ensure_leased(
    settings: &PullOptions,
    reference: &Reference,
    policy: PullPolicy,
    progress: &dyn ProgressSink,
    lease_name: &str,
    target: Option<&std::path::Path>,
    resolved: Option<Resolved>,
) -> Result<(CachedImage, crate::store::lease::Lease), ImageError> {
    crate::store::create_private_dir(&settings.cache_dir)?;
    let _no_gc = crate::store::lease::pull_lock(&settings.cache_dir).await?;
    let ready = ensure(settings, reference, policy, resolved, progress).await?;
    let diff_ids = ready.record.diff_ids();
    let lease = crate::store::lease::Lease::acquire(
        &settings.cache_dir,
        lease_name,
        &ready.record.reference,
        &diff_ids,
        target,
    )
    .await?;
    Ok((ready, lease))
}

/// Makes `reference` ready in the cache according to `policy` (a pull
/// starting from `resolved` when it was resolved already).
pub async fn ensure(
    settings: &PullOptions,
    reference: &Reference,
    policy: PullPolicy,
    resolved: Option<Resolved>,
    progress: &dyn ProgressSink,
) -> Result<CachedImage, ImageError> {
    if policy != PullPolicy::Always {
        if let Some(record) = cached(settings, reference)? {
            tracing::info!(image = %reference, digest = %record.manifest, "image is in the node cache");
            return Ok(CachedImage {
                record,
                pulled: false,
            });
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NotCached(reference.to_string()));
        }
    }
    let pulled = pull_resolved(settings, reference, true, resolved, progress).await?;
    let record = ImageRecord::new(
        reference,
        &pulled.manifest_digest,
        &pulled.manifest,
        &pulled.config,
    );
    Ok(CachedImage {
        record,
        pulled: true,
    })
}
