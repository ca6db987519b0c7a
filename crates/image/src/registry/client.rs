//! The distribution API over HTTP(S): endpoints (mirrors before the origin),
//! TLS roots, auth challenges answered once per scope, retries with backoff.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{parse_challenge, Authenticator};
use super::credentials::Keychain;
use super::manifest::ACCEPTED_MANIFEST_TYPES;
use super::{Reference, RegistryError};
use cvmd_digest::Digest;

/// Manifests and configs are small; a registry that sends more is hostile.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with a little jitter so that many workspaces on a
    /// node do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let jitter = Duration::from_millis(u64::from(std::process::id() % 97));
        exp.min(self.max_delay) + jitter
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries (host[:port]) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM files, or folders of them, trusted beside the system roots.
    pub extra_ca_paths: Vec<PathBuf>,
    /// Per registry host, mirrors (host[:port] or URL) tried in order before it.
    pub mirrors: HashMap<String, Vec<String>>,
    pub keychain: Keychain,
    pub retry: RetryPolicy,
}

/// Makes ring the process's TLS crypto, for every reqwest client built
/// after (the tests' included). aws-lc, reqwest's default, seeds its random
/// generator from CPU jitter at the first handshake: ~30 ms of CPU on the
/// critical path of every cold start from an HTTPS registry. ring draws
/// from the kernel's getrandom, and decrypts as fast here.
pub fn tls_crypto() {
    // An Err only says a provider is installed already: this one, or one
    // the embedding program chose.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub base: Url,
    pub host: String,
    pub mirror: bool,
}

#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    /// For blob bodies: HTTP/1.1, so each blob in flight has a connection
    /// (and a TLS session) of its own. Over one HTTP/2 connection the
    /// layers of a pull shared one TCP window, one TLS stream and the
    /// server's one writer per connection (distribution's Go server): an
    /// HTTPS pull took 2.2x the plain one, waiting rather than working.
    /// Manifests, configs and tokens stay on `http`.
    pub(super) blobs: reqwest::Client,
    auth: Authenticator,
    options: ClientOptions,
}

/// A manifest as the registry sent it.
#[derive(Debug)]
pub struct RawManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    pub digest: Digest,
}

/// A blob body, possibly starting at an offset (a honoured Range request).
#[derive(Debug)]
pub struct BlobResponse {
    pub response: Response,
    pub offset: u64,
    pub host: String,
}

impl RegistryClient {
    pub fn new(options: ClientOptions) -> Result<Self, RegistryError> {
        tls_crypto();
        let roots = trusted_roots(load_extra_cas(&options.extra_ca_paths)?);
        let http = Self::http_client(&roots, false)?;
        let blobs = Self::http_client(&roots, true)?;
        Ok(RegistryClient {
            http,
            blobs,
            auth: Authenticator::new(options.keychain.clone()),
            options,
        })
    }

    fn http_client(
        roots: &[reqwest::Certificate],
        http1_only: bool,
    ) -> Result<reqwest::Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("cvmd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .redirect(super::realm::redirect_policy())
            .tls_backend_rustls()
            .tls_certs_only(roots.iter().cloned());
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().map_err(|e| RegistryError::Invalid {
            what: "HTTP client settings".into(),
            why: describe(&e),
        })
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.options.retry
    }

    /// Mirrors in their configured order, then the registry itself.
    pub fn endpoints(&self, r: &Reference) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for m in self.options.mirrors.get(&r.registry).into_iter().flatten() {
            if let Some(ep) = self.endpoint(m, true) {
                out.push(ep);
            }
        }
        out.extend(self.endpoint(r.api_host(), false));
        out
    }

    fn endpoint(&self, host_or_url: &str, mirror: bool) -> Option<Endpoint> {
        let url = if host_or_url.contains("://") {
            Url::parse(host_or_url).ok()?
        } else {
            let insecure = self
                .options
                .insecure_registries
                .iter()
                .any(|i| i == host_or_url);
            let scheme = if insecure { "http" } else { "https" };
            Url::parse(&format!("{scheme}://{host_or_url}/")).ok()?
        };
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str()?),
            None => url.host_str()?.to_string(),
        };
        Some(Endpoint {
            base: url,
            host,
            mirror,
        })
    }

    /// Fetches a manifest by tag or digest, trying each endpoint in turn.
    pub async fn get_manifest(
        &self,
        r: &Reference,
        key: &str,
    ) -> Result<RawManifest, RegistryError> {
        let path = format!("v2/{}/manifests/{key}", r.repository);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPTED_MANIFEST_TYPES));
        let what = format!("manifest {key:?} of {r}");
        let (response, _) = match self
            .first_success(r, Method::GET, &path, headers, &what)
            .await
        {
            Ok(found) => found,
            Err(RegistryError::Http {
                status: 404,
                message,
                ..
            }) => {
                let repository_known = match message.as_deref() {
                    Some(m) if m.starts_with("NAME_UNKNOWN") => false,
                    _ => self.repository_known(r).await,
                };
                return Err(not_found(r, key, repository_known));
            }
            Err(e) => return Err(e),
        };
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| with_what(e, &what))?;
        Ok(RawManifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type,
        })
    }

    /// Whether the registry knows the repository, asked after a manifest 404:
    /// distribution answers MANIFEST_UNKNOWN for a tag of a repository that
    /// does not exist, and only the tags list says NAME_UNKNOWN. Anything but
    /// a NAME_UNKNOWN answer counts as known, so the message stays the
    /// manifest's.
    async fn repository_known(&self, r: &Reference) -> bool {
        let path = format!("v2/{}/tags/list", r.repository);
        let what = format!("tags of {r}");
        !matches!(
            self.first_success(r, Method::GET, &path, HeaderMap::new(), &what).await,
            Err(RegistryError::Http { status: 404, message: Some(m), .. }) if m.starts_with("NAME_UNKNOWN")
        )
    }

    /// A small blob (an image config) read whole and verified.
    pub async fn get_small_blob(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("blob {digest} of {r}");
        let blob = self.get_blob(r, digest, 0).await?;
        let bytes = read_limited(blob.response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| with_what(e, &what))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob at `offset` (a Range request when > 0). The answer's
    /// `offset` is 0 when the registry ignored the range.
    pub async fn get_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse, RegistryError> {
        let path = format!("v2/{}/blobs/{digest}", r.repository);
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"),
            );
        }
        let what = format!("blob {digest} of {r}");
        let (response, ep) = self
            .first_success_on(&self.blobs, r, Method::GET, &path, headers, &what)
            .await
            .map_err(|e| match e {
                RegistryError::Http {
                    status: 404, host, ..
                } => RegistryError::BlobNotFound {
                    registry: host,
                    repository: r.repository.clone(),
                    digest: digest.clone(),
                },
                e => e,
            })?;
        let start = if response.status() == StatusCode::PARTIAL_CONTENT {
            content_range_start(response.headers()).ok_or_else(|| RegistryError::Invalid {
                what: what.clone(),
                why: "a 206 answer without a valid Content-Range".into(),
            })?
        } else {
            0
        };
        if start != 0 && start != offset {
            return Err(RegistryError::Invalid {
                what,
                why: format!("asked for bytes from {offset}, got a range from {start}"),
            });
        }
        Ok(BlobResponse {
            response,
            offset: start,
            host: ep.host,
        })
    }

    async fn first_success(
        &self,
        r: &Reference,
        method: Method,
        path: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<(Response, Endpoint), RegistryError> {
        self.first_success_on(&self.http, r, method, path, headers, what)
            .await
    }

    /// Tries each endpoint with `http`; a mirror's failure falls through to
    /// the next.
    pub(super) async fn first_success_on(
        &self,
        http: &reqwest::Client,
        r: &Reference,
        method: Method,
        path: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<(Response, Endpoint), RegistryError> {
        let endpoints = self.endpoints(r);
        let mut last = None;
        for (i, ep) in endpoints.iter().enumerate() {
            match self
                .request(
                    http,
                    ep,
                    &r.repository,
                    method.clone(),
                    path,
                    headers.clone(),
                    what,
                )
                .await
            {
                Ok(resp) => return Ok((resp, ep.clone())),
                Err(e) if i + 1 < endpoints.len() => {
                    tracing::warn!(mirror = %ep.host, error = %e, "mirror failed, trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Invalid {
            what: what.into(),
            why: "no endpoint to try".into(),
        }))
    }

    /// One request with auth and retries on transient failures.
    // The client is chosen per call (blobs have their own, see `blobs`).
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        http: &reqwest::Client,
        ep: &Endpoint,
        repository: &str,
        method: Method,
        path: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let url = ep.base.join(path).map_err(|_| RegistryError::Invalid {
            what: what.into(),
            why: "cannot form the request URL".into(),
        })?;
        let scope = format!("repository:{repository}:pull");
        let policy = &self.options.retry;
        let mut attempt = 0;
        loop {
            let result = self
                .authorized_send(http, ep, &scope, &method, &url, &headers, what, None)
                .await;
            match result {
                Err(e) if e.is_transient() && attempt + 1 < policy.attempts => {
                    let delay = policy.delay(attempt);
                    tracing::warn!(host = %ep.host, %what, error = %e, attempt = attempt + 1, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn authorized_send(
        &self,
        http: &reqwest::Client,
        ep: &Endpoint,
        scope: &str,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        what: &str,
        body: Option<&BodyMaker<'_>>,
    ) -> Result<Response, RegistryError> {
        // A body is made afresh per send: a 401 answered, or a retry,
        // sends it again.
        let send = |auth: Option<String>| -> Result<_, RegistryError> {
            let mut req = http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(make) = body {
                req = req.body(make()?);
            }
            Ok(req.send())
        };
        let mut response = send(self.auth.cached_header(&ep.host, scope))?
            .await
            .map_err(|e| classify(&ep.host, &e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let header = match &challenge {
                Some(c) => self.auth.answer(&self.http, ep, scope, c).await?,
                None => None,
            };
            if let Some(header) = header {
                response = send(Some(header))?
                    .await
                    .map_err(|e| classify(&ep.host, &e))?;
            }
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let credential_source = self.auth.credential(&ep.host)?.map(|(_, src)| src);
        Err(match status {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                registry: ep.host.clone(),
                scope: scope.to_string(),
                credential_source,
            },
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: ep.host.clone(),
                repository: scope
                    .trim_start_matches("repository:")
                    .rsplit_once(':')
                    .map_or(scope, |(repository, _)| repository)
                    .to_string(),
                credential_source,
            },
            _ => RegistryError::Http {
                host: ep.host.clone(),
                status: status.as_u16(),
                what: what.to_string(),
                message: error_message(response).await,
            },
        })
    }
}

/// Makes a request body, once per attempt.
pub(super) type BodyMaker<'a> = dyn Fn() -> Result<reqwest::Body, RegistryError> + Send + Sync + 'a;

impl RegistryClient {
    /// The registry itself, never a mirror: where pushes go.
    pub(super) fn origin(&self, r: &Reference) -> Result<Endpoint, RegistryError> {
        self.endpoint(r.api_host(), false)
            .ok_or_else(|| RegistryError::Invalid {
                what: format!("registry of {r}"),
                why: "cannot form its URL".into(),
            })
    }

    /// One request to `url` on the origin under `scope` (e.g.
    /// `repository:x:pull,push`), with auth and retries like every other;
    /// `body` makes the body for each attempt.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_scoped(
        &self,
        ep: &Endpoint,
        scope: &str,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<&BodyMaker<'_>>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let http = if body.is_some() {
            &self.blobs
        } else {
            &self.http
        };
        let policy = &self.options.retry;
        let mut attempt = 0;
        loop {
            let result = self
                .authorized_send(http, ep, scope, &method, url, &headers, what, body)
                .await;
            match result {
                Err(e) if e.is_transient() && attempt + 1 < policy.attempts => {
                    let delay = policy.delay(attempt);
                    tracing::warn!(host = %ep.host, %what, error = %e, attempt = attempt + 1, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn not_found(r: &Reference, key: &str, repository_known: bool) -> RegistryError {
    if !repository_known {
        RegistryError::RepositoryNotFound {
            reference: r.to_string(),
            registry: r.registry.clone(),
            repository: r.repository.clone(),
        }
    } else {
        RegistryError::ManifestNotFound {
            reference: r.to_string(),
            repository: r.repository.clone(),
            key: key.to_string(),
        }
    }
}

/// The first `{"errors":[{"code","message"}]}` entry, one line, bounded.
async fn error_message(response: Response) -> Option<String> {
    let body = read_limited(response, 64 << 10).await.ok()?;
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let first = json.get("errors")?.get(0)?;
    let code = first.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let msg = first.get("message").and_then(|c| c.as_str()).unwrap_or("");
    let line: String = format!("{code} {msg}")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Some(line.trim().to_string())
}

pub(super) fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Reads a body whole, refusing more than `limit` bytes.
pub async fn read_limited(response: Response, limit: u64) -> Result<Bytes, RegistryError> {
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(RegistryError::TooLarge {
            what: "the registry's answer".into(),
            limit,
        });
    }
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Transfer {
            what: "reading the registry's answer".into(),
            why: describe(&e),
        })?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RegistryError::TooLarge {
                what: "the registry's answer".into(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

fn with_what(e: RegistryError, what: &str) -> RegistryError {
    match e {
        RegistryError::TooLarge { limit, .. } => RegistryError::TooLarge {
            what: what.to_string(),
            limit,
        },
        RegistryError::Transfer { why, .. } => RegistryError::Transfer {
            what: what.to_string(),
            why,
        },
        e => e,
    }
}

/// The whole source chain of an error on one line: reqwest's own Display
/// says only "error sending request".
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Maps a failed send to what the user should do about it.
pub fn classify(host: &str, e: &reqwest::Error) -> RegistryError {
    let text = describe(e);
    let lower = text.to_ascii_lowercase();
    let host = host.to_string();
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        RegistryError::UnknownHost { host }
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        RegistryError::UnknownAuthority { host }
    } else if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
    {
        RegistryError::NotHttps { host }
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        RegistryError::Tls { host, why: text }
    } else if e.is_body() || e.is_decode() {
        RegistryError::Transfer {
            what: format!("reading from {host}"),
            why: text,
        }
    } else {
        // Refused, reset, timed out: all worth a retry.
        RegistryError::Connect { host, why: text }
    }
}

fn load_extra_cas(paths: &[PathBuf]) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)
                .map_err(|e| ca_error(p, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    let mut certs = Vec::new();
    for f in files {
        let pem = std::fs::read(&f).map_err(|e| ca_error(&f, e.to_string()))?;
        let found = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| ca_error(&f, "not a PEM certificate bundle".into()))?;
        if found.is_empty() {
            return Err(ca_error(&f, "holds no PEM certificate".into()));
        }
        certs.extend(found);
    }
    Ok(certs)
}

/// The CAs a registry's certificate may chain to: the system's and
/// CVMD_EXTRA_CERTS. Read here once for both clients: left to reqwest,
/// each client read the system's whole certificate dir (~5 ms apiece, on
/// every cold pull). System certificates webpki cannot take as roots are
/// skipped, as reqwest's own loading does; an extra one that is not a
/// usable root fails the client's build, as it did there.
fn trusted_roots(extra: Vec<reqwest::Certificate>) -> Vec<reqwest::Certificate> {
    let system = rustls_native_certs::load_native_certs();
    let mut roots: Vec<reqwest::Certificate> = system
        .certs
        .iter()
        .filter(|der| rustls::RootCertStore::empty().add((*der).clone()).is_ok())
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    if roots.is_empty() {
        // A minimal outer image without a CA bundle: that must not stop a
        // pull from a plain-HTTP registry or one CVMD_EXTRA_CERTS vouches for.
        tracing::warn!(
            "no system CA certificates: only CVMD_EXTRA_CERTS are trusted (install ca-certificates in the outer image for public registries)"
        );
    }
    roots.extend(extra);
    roots
}

fn ca_error(path: &std::path::Path, why: String) -> RegistryError {
    RegistryError::Invalid {
        what: format!("extra CA file {}", path.display()),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(opts: ClientOptions) -> RegistryClient {
        RegistryClient::new(opts).unwrap()
    }

    #[test]
    fn mirrors_come_before_the_origin_and_insecure_means_http() {
        let mut opts = ClientOptions {
            insecure_registries: vec!["m1:5000".into(), "reg:5000".into()],
            ..Default::default()
        };
        opts.mirrors.insert(
            "reg:5000".into(),
            vec!["m1:5000".into(), "https://m2.io/".into()],
        );
        let c = client(opts);
        let r: Reference = "reg:5000/a/b".parse().unwrap();
        let eps: Vec<String> = c.endpoints(&r).iter().map(|e| e.base.to_string()).collect();
        assert_eq!(
            eps,
            ["http://m1:5000/", "https://m2.io/", "http://reg:5000/"]
        );
        let hub: Reference = "ubuntu".parse().unwrap();
        assert_eq!(
            c.endpoints(&hub)[0].base.as_str(),
            "https://registry-1.docker.io/"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.delay(1) > p.delay(0));
        assert!(p.delay(30) <= p.max_delay + Duration::from_millis(97));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let e = RegistryClient::new(ClientOptions {
            extra_ca_paths: vec!["/nonexistent/ca.pem".into()],
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
