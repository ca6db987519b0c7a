//! Talking to registries: references, credentials, auth, manifests, blobs.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod manifest;
pub mod push;
pub mod range;
pub mod realm;
pub mod reference;

pub use client::{ClientOptions, RegistryClient};
pub use reference::Reference;

use cvmd_digest::Digest;

/// How to pass credentials, said wherever a pull is refused for lack of them.
const SECRET_HINT: &str = "pass a pull secret with CVMD_PULL_SECRET (or CODER_IMAGE_PULL_SECRET): a path to a .dockerconfigjson file or the JSON itself";

/// Every message is one line a user can act on, and never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}", unauthorized_message(registry, scope, credential_source.as_deref()))]
    Unauthorized {
        registry: String,
        scope: String,
        credential_source: Option<String>,
    },
    #[error("{}", denied_message(registry, repository, credential_source.as_deref()))]
    Denied {
        registry: String,
        repository: String,
        credential_source: Option<String>,
    },
    #[error("{}", push_denied_message(registry, repository, credential_source.as_deref()))]
    PushDenied {
        registry: String,
        repository: String,
        credential_source: Option<String>,
    },
    #[error("image {reference} not found: repository {repository} has no manifest {key:?}")]
    ManifestNotFound {
        reference: String,
        repository: String,
        key: String,
    },
    #[error("image {reference} not found: registry {registry} has no repository {repository} (or it is private: {SECRET_HINT})")]
    RepositoryNotFound {
        reference: String,
        registry: String,
        repository: String,
    },
    #[error("blob {digest} of {repository} is missing on registry {registry}")]
    BlobNotFound {
        registry: String,
        repository: String,
        digest: Digest,
    },
    #[error(
        "cannot resolve registry host {host}: check the image reference and this machine's DNS"
    )]
    UnknownHost { host: String },
    #[error("cannot connect to registry {host}: {why}")]
    Connect { host: String, why: String },
    #[error("TLS: the certificate of registry {host} is signed by an unknown authority: add its CA with CVMD_EXTRA_CERTS (or CODER_EXTRA_CERTS_PATH), or list the registry in CVMD_INSECURE_REGISTRIES if it speaks plain HTTP")]
    UnknownAuthority { host: String },
    #[error("TLS with registry {host} failed: {why}")]
    Tls { host: String, why: String },
    #[error("registry {host} does not speak HTTPS (plain HTTP?): list it in CVMD_INSECURE_REGISTRIES to allow plain HTTP")]
    NotHttps { host: String },
    #[error("registry {host} answered {status} for {what}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        host: String,
        status: u16,
        what: String,
        message: Option<String>,
    },
    #[error("token endpoint {realm}: {why}")]
    Token { realm: String, why: String },
    #[error("registry {registry} named the token realm {realm}, which cvmd refuses: {why}")]
    RealmRefused {
        registry: String,
        realm: String,
        why: String,
    },
    #[error("{what}: the registry sent content with digest {actual}, expected {expected}; nothing was stored")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: the registry sent {actual} bytes, expected {expected}; nothing was stored")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} is larger than the {limit} bytes cvmd accepts")]
    TooLarge { what: String, limit: u64 },
    #[error(
        "unsupported media type {media_type:?} for {what}{}",
        hint_for_media_type(media_type)
    )]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    #[error("image {reference} has no manifest for platform {wanted} (it has: {available}); set CVMD_PLATFORM to one of those")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{what}: {why}")]
    Transfer { what: String, why: String },
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
}

impl RegistryError {
    /// Worth another attempt (5xx, reset, timeout), as opposed to a definite
    /// answer (401, 404, bad content).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            RegistryError::Connect { .. } | RegistryError::Transfer { .. } => true,
            _ => false,
        }
    }
}

fn unauthorized_message(registry: &str, scope: &str, source: Option<&str>) -> String {
    match source {
        None => format!("registry {registry} requires authentication ({scope}) and no credentials were given for it: {SECRET_HINT}"),
        Some(src) => format!("registry {registry} refused the credentials from {src} ({scope}): check the user name and password or token in it"),
    }
}

fn denied_message(registry: &str, repository: &str, source: Option<&str>) -> String {
    match source {
        None => format!("registry {registry} denied access to {repository} without credentials: {SECRET_HINT}"),
        Some(src) => format!("registry {registry} denied access to {repository} with the credentials from {src}: they lack pull permission on it"),
    }
}

fn push_denied_message(registry: &str, repository: &str, source: Option<&str>) -> String {
    match source {
        None => format!("registry {registry} denied pushing to {repository} without credentials: pass credentials with push permission in CVMD_PULL_SECRET or the docker config"),
        Some(src) => format!("registry {registry} denied pushing to {repository} with the credentials from {src}: they lack push permission on it"),
    }
}

fn hint_for_media_type(media_type: &str) -> &'static str {
    if media_type.contains("manifest.v1") {
        ": Docker schema 1 images are not supported; push the image again with a current docker, buildah or skopeo"
    } else if media_type.contains("encrypted") {
        ": encrypted layers are not supported"
    } else {
        ""
    }
}
