//! A minimal distribution API client for seeding registries: blob uploads,
//! manifest puts and gets, with Basic and Bearer (token) auth.

use super::image::{Image, Index, ACCEPT_ALL};
use base64::Engine;
use reqwest::{Method, StatusCode};
use std::path::Path;
use std::sync::Mutex;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone, Debug)]
pub struct PushedImage {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub index_digest: String,
    pub images: Vec<PushedImage>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-case scheme: `basic` or `bearer`.
    pub scheme: String,
    pub realm: Option<String>,
    pub service: Option<String>,
    pub scope: Option<String>,
    pub error: Option<String>,
}

/// Parses `Bearer realm="…",service="…",scope="repository:a:pull,push"`;
/// quoted values may hold commas.
pub fn parse_challenge(h: &str) -> Challenge {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut c = Challenge {
        scheme: scheme.to_ascii_lowercase(),
        ..Default::default()
    };
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&ch| ch != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(ch) = chars.next() {
                match ch {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    _ => val.push(ch),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch == ',' {
                    break;
                }
                val.push(ch);
                chars.next();
            }
        }
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => c.realm = Some(val),
            "service" => c.service = Some(val),
            "scope" => c.scope = Some(val),
            "error" => c.error = Some(val),
            _ => {}
        }
    }
    c
}

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    creds: Option<(String, String)>,
    /// Authorization header that last worked, reused until a 401.
    authz: Mutex<Option<String>>,
}

/// Pushes `image` (blobs, then the manifest under `reference`).
pub async fn push(
    registry_url: &str,
    repo: &str,
    reference: &str,
    image: &Image,
    auth: Option<(&str, &str)>,
    ca: Option<&Path>,
) -> Result<PushedImage> {
    RegistryClient::new(registry_url, auth, ca)
        .push_image(repo, reference, image)
        .await
}

impl RegistryClient {
    pub fn new(base_url: &str, creds: Option<(&str, &str)>, ca: Option<&Path>) -> Self {
        RegistryClient {
            http: super::http_client(ca),
            base: base_url.trim_end_matches('/').to_string(),
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            authz: Mutex::new(None),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn basic_header(&self) -> Option<String> {
        let (u, p) = self.creds.as_ref()?;
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        Some(format!("Basic {enc}"))
    }

    /// Fetches a bearer token for `scope` as the challenge says.
    pub async fn fetch_token(&self, ch: &Challenge, scope: &str) -> Result<String> {
        let realm = ch
            .realm
            .as_deref()
            .ok_or("bearer challenge without realm")?;
        let mut url = format!("{realm}?scope={}", super::url_encode(scope));
        if let Some(s) = &ch.service {
            url.push_str(&format!("&service={}", super::url_encode(s)));
        }
        let mut req = self.http.get(url);
        if let Some(b) = self.basic_header() {
            req = req.header("authorization", b);
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            return Err(format!("token endpoint {realm}: {}", resp.status()).into());
        }
        let v: serde_json::Value = resp.json().await?;
        let tok = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .ok_or("token response without token")?;
        Ok(tok.to_string())
    }

    /// Sends a request, answering one 401 challenge (Basic or Bearer with
    /// `repository:<repo>:pull,push`) and retrying.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        repo: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_string()
        };
        for attempt in 0..2 {
            let mut req = self.http.request(method.clone(), &url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(a) = self.authz.lock().unwrap().clone() {
                req = req.header("authorization", a);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let resp = req.send().await?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let ch = resp
                .headers()
                .get("www-authenticate")
                .and_then(|h| h.to_str().ok())
                .map(parse_challenge)
                .ok_or("401 without WWW-Authenticate")?;
            let authz = match ch.scheme.as_str() {
                "basic" => self
                    .basic_header()
                    .ok_or("registry wants Basic, no creds")?,
                "bearer" => {
                    let scope = if repo.is_empty() {
                        ch.scope.clone().unwrap_or_default()
                    } else {
                        format!("repository:{repo}:pull,push")
                    };
                    format!("Bearer {}", self.fetch_token(&ch, &scope).await?)
                }
                other => return Err(format!("unknown auth scheme {other}").into()),
            };
            *self.authz.lock().unwrap() = Some(authz);
        }
        unreachable!()
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                repo,
                &[],
                None,
            )
            .await?;
        Ok(r.status().is_success())
    }

    /// Uploads `data` unless already present; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String> {
        let digest = super::sha256_digest(data);
        if !self.blob_exists(repo, &digest).await? {
            self.push_blob_as(repo, &digest, data).await?;
        }
        Ok(digest)
    }

    /// Monolithic upload (POST then PUT `?digest=`) claiming `digest`, which
    /// need not match `data` (the registry then answers 400
    /// DIGEST_INVALID, returned as an error).
    pub async fn push_blob_as(&self, repo: &str, digest: &str, data: &[u8]) -> Result<()> {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                repo,
                &[],
                None,
            )
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(format!("start upload: {} {}", r.status(), r.text().await?).into());
        }
        let loc = r
            .headers()
            .get("location")
            .and_then(|h| h.to_str().ok())
            .ok_or("upload without Location")?
            .to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let url = format!("{loc}{sep}digest={digest}");
        let len = data.len().to_string();
        let r = self
            .send(
                Method::PUT,
                &url,
                repo,
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-length", &len),
                ],
                Some(data.to_vec()),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(
                format!("finish upload {digest}: {} {}", r.status(), r.text().await?).into(),
            );
        }
        Ok(())
    }

    /// PUTs arbitrary manifest bytes with an arbitrary Content-Type; returns
    /// the registry's `Docker-Content-Digest`.
    pub async fn push_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let r = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                repo,
                &[("content-type", content_type)],
                Some(body.to_vec()),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(format!(
                "put manifest {repo}:{reference}: {} {}",
                r.status(),
                r.text().await?
            )
            .into());
        }
        Ok(r.headers()
            .get("docker-content-digest")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| super::sha256_digest(body)))
    }

    pub async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        image: &Image,
    ) -> Result<PushedImage> {
        let mut layer_digests = Vec::new();
        for l in &image.layers {
            layer_digests.push(self.push_blob(repo, &l.data).await?);
        }
        let config_digest = self.push_blob(repo, &image.config).await?;
        let manifest_digest = self
            .push_manifest_raw(repo, reference, &image.media_type, &image.manifest)
            .await?;
        assert_eq!(
            manifest_digest, image.manifest_digest,
            "registry digest differs"
        );
        Ok(PushedImage {
            manifest_digest,
            config_digest,
            layer_digests,
        })
    }

    /// Pushes every child image by digest, then the index under `reference`.
    pub async fn push_index(
        &self,
        repo: &str,
        reference: &str,
        index: &Index,
    ) -> Result<PushedIndex> {
        let mut images = Vec::new();
        for img in &index.images {
            images.push(self.push_image(repo, &img.manifest_digest, img).await?);
        }
        let index_digest = self
            .push_manifest_raw(repo, reference, &index.media_type, &index.manifest)
            .await?;
        Ok(PushedIndex {
            index_digest,
            images,
        })
    }

    /// GETs a manifest with `Accept: accept` (or [`ACCEPT_ALL`]); returns
    /// status, Content-Type and body.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: Option<&str>,
    ) -> Result<(u16, String, Vec<u8>)> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
                repo,
                &[("accept", accept.unwrap_or(ACCEPT_ALL))],
                None,
            )
            .await?;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok((status, ct, r.bytes().await?.to_vec()))
    }

    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/blobs/{digest}"),
                repo,
                &[],
                None,
            )
            .await?;
        if !r.status().is_success() {
            return Err(format!("get blob {digest}: {}", r.status()).into());
        }
        Ok(r.bytes().await?.to_vec())
    }
}
