//! Getting an image ready in the node cache: from the local record when it
//! is complete (a warm start costs no network), otherwise by pulling, as the
//! pull policy says.

use std::str::FromStr;
use std::sync::Arc;

use crate::config::Settings;
use crate::pull::{ProgressSink, PullError, Puller};
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

pub struct ReadyImage {
    pub record: ImageRecord,
    /// False when everything came from the cache without asking a registry.
    pub pulled: bool,
}

/// A puller configured from the settings.
fn puller(settings: &Settings) -> Result<Puller, ImageError> {
    crate::store::fs_check::check(&settings.cache_dir)?;
    let client = RegistryClient::new(settings.client_options()?)?;
    Ok(Puller {
        client: Arc::new(client),
        store: ContentStore::open(&settings.cache_dir)?,
        layers: LayerCache::open(&settings.cache_dir)?,
        max_layer_bytes: settings.max_layer_size,
        max_image_bytes: settings.max_image_size,
        cache_reserve: Some(settings.cache_reserve),
        preserve_ownership: nix::unistd::geteuid().is_root(),
        platform: settings.platform.clone(),
        concurrency: settings.pull_concurrency,
        unpack: true,
    })
}

/// Pulls `reference` from its registry into the node cache (unpacking its
/// layers unless `unpack` is false), then keeps the cache within its budget.
/// The one pull path of `pull`, `prefetch` and `run`.
pub async fn pull(
    settings: &Settings,
    reference: &Reference,
    unpack: bool,
    progress: &dyn ProgressSink,
) -> Result<crate::pull::PulledImage, ImageError> {
    let mut puller = puller(settings)?;
    puller.unpack = unpack;
    let pulled = puller.pull(reference, progress).await?;
    if let Some(budget) = settings.cache_budget {
        crate::store::gc::collect(&settings.cache_dir, Some(budget)).await?;
    }
    Ok(pulled)
}

/// The cached record of `reference` if every layer it names is unpacked.
pub fn cached(
    settings: &Settings,
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

/// Makes `reference` ready in the cache according to `policy`.
pub async fn ensure(
    settings: &Settings,
    reference: &Reference,
    policy: PullPolicy,
    progress: &dyn ProgressSink,
) -> Result<ReadyImage, ImageError> {
    if policy != PullPolicy::Always {
        if let Some(record) = cached(settings, reference)? {
            tracing::info!(image = %reference, digest = %record.manifest, "image is in the node cache");
            return Ok(ReadyImage {
                record,
                pulled: false,
            });
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NotCached(reference.to_string()));
        }
    }
    let pulled = pull(settings, reference, true, progress).await?;
    let record = ImageRecord::new(
        reference,
        &pulled.manifest_digest,
        &pulled.manifest,
        &pulled.config,
    );
    Ok(ReadyImage {
        record,
        pulled: true,
    })
}
