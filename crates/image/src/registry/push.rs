//! Pushing to a registry (the distribution spec's "Push"): a blob is
//! skipped when the repository has it (HEAD), else uploaded monolithically
//! (POST for an upload URL, one PUT with the content and its digest); a
//! manifest is PUT by tag or digest. Always to the registry itself, never a
//! mirror, with the client's auth under the scope `pull,push`.

use std::path::Path;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};

use super::client::{BodyMaker, Endpoint};
use super::{Reference, RegistryClient, RegistryError};
use cvmd_digest::Digest;

impl RegistryClient {
    fn push_scope(r: &Reference) -> String {
        format!("repository:{}:pull,push", r.repository)
    }

    fn url(ep: &Endpoint, path: &str, what: &str) -> Result<Url, RegistryError> {
        ep.base.join(path).map_err(|_| RegistryError::Invalid {
            what: what.into(),
            why: format!("cannot form the URL for {path}"),
        })
    }

    /// Whether `r`'s repository already holds the blob.
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let ep = self.origin(r)?;
        let what = format!("blob {digest} of {r}");
        let url = Self::url(&ep, &format!("v2/{}/blobs/{digest}", r.repository), &what)?;
        let scope = Self::push_scope(r);
        match self
            .send_scoped(
                &ep,
                &scope,
                Method::HEAD,
                &url,
                HeaderMap::new(),
                None,
                &what,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(RegistryError::Http { status: 404, .. }) => Ok(false),
            Err(e) => Err(push_denied(e)),
        }
    }

    /// Uploads the file at `path` as blob `digest` of `size` bytes, unless
    /// the repository has it. Returns whether it was uploaded.
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<bool, RegistryError> {
        let what = format!("blob {digest} to {r}");
        let path = path.to_path_buf();
        let make = move || -> Result<reqwest::Body, RegistryError> {
            let file = std::fs::File::open(&path).map_err(|e| RegistryError::Transfer {
                what: format!("reading {}", path.display()),
                why: e.to_string(),
            })?;
            Ok(reqwest::Body::from(tokio::fs::File::from_std(file)))
        };
        self.push_blob(r, digest, size, &make, &what).await
    }

    /// Uploads `bytes` as a blob (a config), unless the repository has it.
    pub async fn push_blob_bytes(
        &self,
        r: &Reference,
        bytes: Bytes,
    ) -> Result<(Digest, bool), RegistryError> {
        let digest = Digest::of(&bytes);
        let what = format!("blob {digest} to {r}");
        let size = bytes.len() as u64;
        let make = move || -> Result<reqwest::Body, RegistryError> { Ok(bytes.clone().into()) };
        let pushed = self.push_blob(r, &digest, size, &make, &what).await?;
        Ok((digest, pushed))
    }

    async fn push_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        body: &BodyMaker<'_>,
        what: &str,
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(r, digest).await? {
            return Ok(false);
        }
        let ep = self.origin(r)?;
        let scope = Self::push_scope(r);
        let start = Self::url(&ep, &format!("v2/{}/blobs/uploads/", r.repository), what)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
        let response = self
            .send_scoped(&ep, &scope, Method::POST, &start, headers, None, what)
            .await
            .map_err(push_denied)?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(RegistryError::Invalid {
                what: what.into(),
                why: format!(
                    "starting the upload answered {}, not 202 Accepted",
                    response.status().as_u16()
                ),
            });
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Invalid {
                what: what.into(),
                why: "the upload answer has no Location".into(),
            })?;
        // Relative or absolute, as the spec allows.
        let mut upload = ep.base.join(location).map_err(|_| RegistryError::Invalid {
            what: what.into(),
            why: "the upload Location is not a URL".into(),
        })?;
        if upload.host_str() != ep.base.host_str() || upload.port() != ep.base.port() {
            // Credentials go only where the pull ones go.
            return Err(RegistryError::Invalid {
                what: what.into(),
                why: "the upload Location points at another host".into(),
            });
        }
        upload
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let response = self
            .send_scoped(&ep, &scope, Method::PUT, &upload, headers, Some(body), what)
            .await
            .map_err(push_denied)?;
        if response.status() != StatusCode::CREATED {
            return Err(RegistryError::Invalid {
                what: what.into(),
                why: format!(
                    "the upload answered {}, not 201 Created",
                    response.status().as_u16()
                ),
            });
        }
        Ok(true)
    }

    /// PUTs a manifest of `media_type` under `r`'s tag (or its digest when
    /// it has no tag); returns the manifest's digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&bytes);
        let key = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let what = format!("manifest {key:?} to {r}");
        let ep = self.origin(r)?;
        let url = Self::url(&ep, &format!("v2/{}/manifests/{key}", r.repository), &what)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::Invalid {
                what: what.clone(),
                why: "the media type is not a header value".into(),
            })?,
        );
        let make = move || -> Result<reqwest::Body, RegistryError> { Ok(bytes.clone().into()) };
        let scope = Self::push_scope(r);
        self.send_scoped(&ep, &scope, Method::PUT, &url, headers, Some(&make), &what)
            .await
            .map_err(push_denied)?;
        Ok(digest)
    }
}

/// A 403 on a push is about push permission, not pull.
fn push_denied(e: RegistryError) -> RegistryError {
    match e {
        RegistryError::Denied {
            registry,
            repository,
            credential_source,
        } => RegistryError::PushDenied {
            registry,
            repository,
            credential_source,
        },
        e => e,
    }
}
