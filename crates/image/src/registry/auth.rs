//! Registry authentication: the `WWW-Authenticate` challenge, HTTP Basic,
//! and the distribution token flow (token endpoint, scopes, OAuth2 refresh
//! tokens), with tokens reused until shortly before they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::client::Endpoint;
use super::credentials::{Credential, Keychain};
use super::realm as policy;
use super::RegistryError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` (RFC 7235 auth-params,
/// quoted or token values). Unknown schemes give None.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Any JSON number (or none): a registry's answer is clamped by
    /// [`token_lifetime`], never trusted to fit an `Instant`.
    #[serde(default)]
    expires_in: Option<serde_json::Number>,
}

/// The distribution token spec's default when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// Tokens are cached at most this long, whatever the registry says. Real
/// registries issue 5 min (Docker Hub) to 12 h (ECR); a day bounds a hostile
/// or broken answer (`u64::MAX` once overflowed `Instant + Duration` and
/// panicked) without renewing real tokens more often than they ask.
const MAX_TOKEN_LIFETIME: u64 = 24 * 60 * 60;

/// How long to cache a token whose answer said `expires_in`: the spec's
/// default when absent, at least 1 s (zero, negative or fractional values
/// are taken as "short"), at most [`MAX_TOKEN_LIFETIME`].
fn token_lifetime(expires_in: Option<&serde_json::Number>) -> u64 {
    let Some(n) = expires_in else {
        return DEFAULT_TOKEN_LIFETIME;
    };
    let secs = match (n.as_u64(), n.as_f64()) {
        (Some(secs), _) => secs,
        // Negative or fractional: `as` saturates (NaN and below 0 give 0),
        // which is the clamp wanted here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (None, Some(f)) => f as u64,
        (None, None) => 0,
    };
    secs.clamp(1, MAX_TOKEN_LIFETIME)
}

struct CachedToken {
    header: String,
    valid_until: Instant,
}

/// The header is a credential: never printed.
impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("header", &"<redacted>")
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

/// Remembers, per registry host, which scheme the registry asked for and the
/// tokens it issued per scope.
#[derive(Debug)]
pub struct Authenticator {
    keychain: Keychain,
    basic_hosts: Mutex<HashMap<String, ()>>,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    /// Looked up once per host: helpers are processes.
    credentials: Mutex<HashMap<String, Option<(Credential, String)>>>,
}

impl Authenticator {
    pub fn new(keychain: Keychain) -> Self {
        Authenticator {
            keychain,
            basic_hosts: Mutex::default(),
            tokens: Mutex::default(),
            credentials: Mutex::default(),
        }
    }

    /// The credential and the name of its source for `host`.
    pub fn credential(&self, host: &str) -> Result<Option<(Credential, String)>, RegistryError> {
        if let Some(c) = self.credentials.lock().unwrap().get(host) {
            return Ok(c.clone());
        }
        let found = self.keychain.lookup(host)?;
        self.credentials
            .lock()
            .unwrap()
            .insert(host.to_string(), found.clone());
        Ok(found)
    }

    /// An `Authorization` header to send before any challenge, when one is
    /// known for this host and scope.
    pub fn cached_header(&self, host: &str, scope: &str) -> Option<String> {
        if self.basic_hosts.lock().unwrap().contains_key(host) {
            return self.basic_header(host).ok().flatten();
        }
        let tokens = self.tokens.lock().unwrap();
        let t = tokens.get(&(host.to_string(), scope.to_string()))?;
        (Instant::now() < t.valid_until).then(|| t.header.clone())
    }

    fn basic_header(&self, host: &str) -> Result<Option<String>, RegistryError> {
        Ok(match self.credential(host)? {
            Some((Credential::Basic { username, password }, _)) => {
                use base64::Engine as _;
                let raw = format!("{username}:{}", password.expose());
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            Some((Credential::RegistryToken(t), _)) => Some(format!("Bearer {}", t.expose())),
            _ => None,
        })
    }

    /// Answers a 401 challenge: returns the header to retry with, or None
    /// when there is nothing to try (no credentials for Basic).
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        ep: &Endpoint,
        scope: &str,
        challenge: &Challenge,
    ) -> Result<Option<String>, RegistryError> {
        let host = ep.host.as_str();
        match challenge {
            Challenge::Basic => {
                let header = self.basic_header(host)?;
                if header.is_some() {
                    self.basic_hosts
                        .lock()
                        .unwrap()
                        .insert(host.to_string(), ());
                }
                Ok(header)
            }
            Challenge::Bearer { realm, service, .. } => {
                let credential = self.credential(host)?.map(|(c, _)| c);
                if let Some(Credential::RegistryToken(t)) = &credential {
                    return Ok(Some(format!("Bearer {}", t.expose())));
                }
                let url = checked_realm(ep, realm).await?;
                let shown = policy::redact(&url);
                let (token, lifetime) =
                    fetch_token(http, url, service.as_deref(), scope, credential.as_ref())
                        .await
                        .map_err(|e| match e {
                            TokenFailure::Refused => RegistryError::Unauthorized {
                                registry: host.to_string(),
                                scope: scope.to_string(),
                                credential_source: self
                                    .credential(host)
                                    .ok()
                                    .flatten()
                                    .map(|(_, src)| src),
                            },
                            TokenFailure::Other(why) => RegistryError::Token {
                                realm: shown.clone(),
                                why,
                            },
                        })?;
                tracing::info!(
                    registry = host,
                    realm = %shown,
                    scope,
                    lifetime_s = lifetime,
                    "fetched a registry token"
                );
                let header = format!("Bearer {token}");
                // Renew a little early so a token does not expire in flight.
                let margin = Duration::from_secs((lifetime / 10).min(10));
                self.tokens.lock().unwrap().insert(
                    (host.to_string(), scope.to_string()),
                    CachedToken {
                        header: header.clone(),
                        valid_until: Instant::now()
                            + Duration::from_secs(lifetime - margin.as_secs()),
                    },
                );
                Ok(Some(header))
            }
        }
    }
}

/// The realm as a URL, once [`policy::judge`] lets the registry at `ep`
/// send cvmd there.
async fn checked_realm(ep: &Endpoint, realm: &str) -> Result<reqwest::Url, RegistryError> {
    let refused = |why: String| RegistryError::RealmRefused {
        registry: ep.host.clone(),
        realm: policy::redact_str(realm),
        why,
    };
    let url = reqwest::Url::parse(realm).map_err(|_| refused("it is not a URL".into()))?;
    let (registry_classes, realm_classes) =
        tokio::join!(policy::classes(&ep.base), policy::classes(&url));
    policy::judge(&ep.base, &registry_classes, &url, &realm_classes).map_err(refused)?;
    Ok(url)
}

enum TokenFailure {
    Refused,
    Other(String),
}

async fn fetch_token(
    http: &reqwest::Client,
    url: reqwest::Url,
    service: Option<&str>,
    scope: &str,
    credential: Option<&Credential>,
) -> Result<(String, u64), TokenFailure> {
    let request = match credential {
        Some(Credential::IdentityToken { token, .. }) => {
            // OAuth2 refresh-token grant, as docker does for identity tokens.
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token.expose()),
                ("client_id", "cvmd"),
                ("scope", scope),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            http.post(url).form(&form)
        }
        other => {
            let mut query = vec![("scope", scope)];
            if let Some(s) = service {
                query.push(("service", s));
            }
            let req = http.get(url).query(&query);
            match other {
                Some(Credential::Basic { username, password }) => {
                    req.basic_auth(username, Some(password.expose()))
                }
                _ => req,
            }
        }
    };
    let response = request.send().await.map_err(|e| {
        TokenFailure::Other(format!(
            "cannot reach the token endpoint: {}",
            super::client::describe(&e)
        ))
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(TokenFailure::Refused);
    }
    if !status.is_success() {
        return Err(TokenFailure::Other(format!(
            "the token endpoint answered {status}"
        )));
    }
    let body = super::client::read_limited(response, 1 << 20)
        .await
        .map_err(|e| TokenFailure::Other(e.to_string()))?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| TokenFailure::Other("the token endpoint did not answer JSON".into()))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenFailure::Other("the token endpoint's answer has no token".into()))?;
    if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(TokenFailure::Other(
            "the token endpoint's token is not a valid header value".into(),
        ));
    }
    Ok((token, token_lifetime(parsed.expires_in.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_token_never_prints() {
        let token = CachedToken {
            header: "Bearer s3cr3t-token".into(),
            valid_until: Instant::now(),
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull".into()),
            })
        );
        let c = parse_challenge(r#"bearer realm=http://t/x, error="invalid_token""#).unwrap();
        assert!(
            matches!(c, Challenge::Bearer { realm, service: None, .. } if realm == "http://t/x")
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "a realm is required"
        );
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn token_lifetimes_are_clamped_to_a_sane_range() {
        let life = |json: &str| {
            let parsed: TokenResponse = serde_json::from_str(json).unwrap();
            token_lifetime(parsed.expires_in.as_ref())
        };
        assert_eq!(life(r#"{"token":"t"}"#), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(life(r#"{"token":"t","expires_in":300}"#), 300);
        assert_eq!(
            life(r#"{"token":"t","expires_in":18446744073709551615}"#),
            MAX_TOKEN_LIFETIME
        );
        assert_eq!(
            life(r#"{"token":"t","expires_in":1e300}"#),
            MAX_TOKEN_LIFETIME
        );
        assert_eq!(life(r#"{"token":"t","expires_in":-5}"#), 1);
        assert_eq!(life(r#"{"token":"t","expires_in":0}"#), 1);
        assert_eq!(life(r#"{"token":"t","expires_in":2.5}"#), 2);
        // Whatever was clamped, the deadline it gives is representable.
        let _ = Instant::now() + Duration::from_secs(MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let p = parse_params(r#"realm="a,b",scope="x\"y""#);
        assert_eq!(p["realm"], "a,b");
        assert_eq!(p["scope"], "x\"y");
    }
}
