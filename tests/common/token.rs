//! A Docker-style token server (distribution "token" auth) run in-process.
//!
//! Supports `GET realm?service=&scope=` (HTTP Basic or anonymous) and the
//! OAuth2 `POST realm` form (`grant_type=password|refresh_token`).

use super::pki::{Ca, Leaf};
use super::server::{self, response, Body, ServerHandle};
use base64::Engine;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// distribution 2.8 accepts tokens up to 60 s past `exp` (and before `nbf`).
pub const REGISTRY_LEEWAY_SECS: u64 = 60;

#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub service: String,
    pub issuer: String,
    /// (user, password) pairs accepted via Basic or `grant_type=password`.
    pub users: Vec<(String, String)>,
    /// Repositories anonymous clients may pull.
    pub public_repos: Vec<String>,
    /// `expires_in` reported to clients, and the token lifetime.
    pub expires_in: u64,
    /// Back-date `exp` by the registry's 60 s leeway so the registry really
    /// rejects a token once `expires_in` has passed. Without it a 2 s token
    /// keeps working for 62 s and a refresh test proves nothing.
    pub enforce_expiry: bool,
    /// Serve the registry itself over HTTPS (the token server stays HTTP).
    pub registry_tls: bool,
    /// Answer this as `expires_in` instead of `expires_in` (a hostile or
    /// broken token server); the token itself still lives `expires_in`.
    pub answered_expires_in: Option<serde_json::Value>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            service: "cvmd-test-registry".into(),
            issuer: "cvmd-test-token-issuer".into(),
            users: Vec::new(),
            public_repos: Vec::new(),
            expires_in: 300,
            enforce_expiry: false,
            registry_tls: false,
            answered_expires_in: None,
        }
    }
}

impl TokenConfig {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn user(mut self, user: &str, pass: &str) -> Self {
        self.users.push((user.into(), pass.into()));
        self
    }
    pub fn public_repo(mut self, repo: &str) -> Self {
        self.public_repos.push(repo.into());
        self
    }
    pub fn expires_in(mut self, secs: u64) -> Self {
        self.expires_in = secs;
        self
    }
    pub fn answer_expires_in(mut self, value: serde_json::Value) -> Self {
        self.answered_expires_in = Some(value);
        self
    }
    pub fn enforce_expiry(mut self, on: bool) -> Self {
        self.enforce_expiry = on;
        self
    }
    pub fn registry_tls(mut self, on: bool) -> Self {
        self.registry_tls = on;
        self
    }
}

/// How a token request authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    Anonymous,
    Basic(String),
    Password(String),
    RefreshToken(String),
    Rejected,
}

#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub grant: Grant,
    pub scopes: Vec<String>,
    pub status: u16,
    /// The access actually granted, as `repository:NAME:a,b` strings.
    pub granted: Vec<String>,
}

struct State {
    cfg: TokenConfig,
    signer: Leaf,
    ca_der: Vec<u8>,
    count: AtomicUsize,
    log: Mutex<Vec<TokenRequest>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
    fail_next: Mutex<(u16, usize)>,
    serial: AtomicUsize,
}

pub struct TokenServer {
    state: Arc<State>,
    handle: ServerHandle,
}

impl TokenServer {
    /// Starts the server; tokens are signed by a leaf of `ca`, whose cert must
    /// be in the registry's `rootcertbundle`.
    pub fn start(cfg: TokenConfig, ca: &Ca) -> TokenServer {
        let state = Arc::new(State {
            cfg,
            signer: ca.signing_leaf(),
            ca_der: ca.der(),
            count: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            fail_next: Mutex::new((0, 0)),
            serial: AtomicUsize::new(0),
        });
        let st = state.clone();
        let handle = server::spawn("token-server", move |req| {
            let st = st.clone();
            async move { handle(st, req).await }
        });
        TokenServer { state, handle }
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.handle.addr)
    }

    pub fn config(&self) -> &TokenConfig {
        &self.state.cfg
    }

    /// Number of token requests received (successful or not).
    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// The next `n` token requests answer `status` (e.g. 500) and count.
    pub fn fail_next(&self, status: u16, n: usize) {
        *self.state.fail_next.lock().unwrap() = (status, n);
    }

    /// Forget every refresh token issued so far (as on a password change).
    pub fn revoke_refresh_tokens(&self) {
        self.state.refresh_tokens.lock().unwrap().clear();
    }

    /// A refresh token from the password grant with `access_type=offline`,
    /// as `docker login` stores it in `identitytoken`.
    pub fn refresh_token(&self, user: &str, pass: &str, repo: &str) -> String {
        let body = format!(
            "grant_type=password&username={user}&password={pass}&service={}&client_id=test&access_type=offline&scope=repository%3A{}%3Apull",
            self.config().service,
            repo.replace('/', "%2F")
        );
        let http = super::http_client(None);
        let realm = self.realm();
        let v: serde_json::Value = super::block_on(async move {
            let r = http
                .post(realm)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json().await.unwrap()
        });
        v["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string()
    }

    /// PEM of the CA whose leaf signs tokens.
    pub fn signer_cert_pem(&self) -> &str {
        &self.state.signer.cert_pem
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// RFC 3339 UTC for unix seconds (no chrono in the allowed deps).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400).cast_signed();
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hexd = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hexd.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=b&c=d` (query strings and form bodies); keys may repeat.
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

fn basic_creds(req: &Request<Incoming>) -> Option<Option<(String, String)>> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let b64 = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))?;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return Some(None);
    };
    let raw = String::from_utf8_lossy(&raw).into_owned();
    Some(
        raw.split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string())),
    )
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    st.count.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let mut params = parse_form(req.uri().query().unwrap_or(""));
    let basic = basic_creds(&req);
    if req.method() == hyper::Method::POST {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return response(400, "text/plain", "bad body"),
        };
        params.extend(parse_form(&String::from_utf8_lossy(&body)));
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();

    let record = |grant: Grant, status: u16, granted: Vec<String>| {
        st.log.lock().unwrap().push(TokenRequest {
            method: method.clone(),
            grant,
            scopes: scopes.clone(),
            status,
            granted,
        });
    };

    {
        let mut f = st.fail_next.lock().unwrap();
        if f.1 > 0 {
            f.1 -= 1;
            let status = f.0;
            drop(f);
            record(Grant::Rejected, status, vec![]);
            return response(status, "text/plain", "injected failure");
        }
    }

    let check = |u: &str, p: &str| st.cfg.users.iter().any(|(cu, cp)| cu == u && cp == p);
    let unauthorized = || {
        let mut r = response(
            401,
            "application/json",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}"#,
        );
        r.headers_mut().insert(
            "www-authenticate",
            "Basic realm=\"token\"".parse().expect("header"),
        );
        r
    };

    let mut offline = false;
    let (grant, user) = match get("grant_type").as_deref() {
        Some("password") => {
            let (u, p) = (
                get("username").unwrap_or_default(),
                get("password").unwrap_or_default(),
            );
            if !check(&u, &p) {
                record(Grant::Rejected, 401, vec![]);
                return unauthorized();
            }
            offline = get("access_type").as_deref() == Some("offline");
            (Grant::Password(u.clone()), Some(u))
        }
        Some("refresh_token") => {
            let rt = get("refresh_token").unwrap_or_default();
            let user = st.refresh_tokens.lock().unwrap().get(&rt).cloned();
            match user {
                Some(u) => (Grant::RefreshToken(u.clone()), Some(u)),
                None => {
                    record(Grant::Rejected, 401, vec![]);
                    return unauthorized();
                }
            }
        }
        Some(_) => {
            record(Grant::Rejected, 400, vec![]);
            return response(
                400,
                "application/json",
                r#"{"error":"unsupported_grant_type"}"#,
            );
        }
        None => match basic {
            Some(Some((u, p))) if check(&u, &p) => (Grant::Basic(u.clone()), Some(u)),
            Some(_) => {
                record(Grant::Rejected, 401, vec![]);
                return unauthorized();
            }
            None => (Grant::Anonymous, None),
        },
    };

    if let Some(svc) = get("service") {
        if svc != st.cfg.service {
            record(Grant::Rejected, 400, vec![]);
            return response(400, "text/plain", "unknown service");
        }
    }

    let mut access = Vec::new();
    let mut granted = Vec::new();
    for scope in &scopes {
        let parts: Vec<&str> = scope.split(':').collect();
        if parts.len() < 3 {
            continue;
        }
        let typ = parts[0];
        let name = parts[1..parts.len() - 1].join(":");
        let wanted: Vec<&str> = parts[parts.len() - 1].split(',').collect();
        // Authenticated users get what they ask for; anonymous clients get
        // pull on public repos and nothing else (like Docker Hub: a token
        // with empty access, not a 401).
        let actions: Vec<&str> = if user.is_some() {
            wanted
        } else if typ == "repository" && st.cfg.public_repos.contains(&name) {
            wanted.into_iter().filter(|a| *a == "pull").collect()
        } else {
            vec![]
        };
        if actions.is_empty() {
            continue;
        }
        granted.push(format!("{typ}:{name}:{}", actions.join(",")));
        access.push(serde_json::json!({"type": typ, "name": name, "actions": actions}));
    }

    let iat = now();
    let exp = if st.cfg.enforce_expiry {
        (iat + st.cfg.expires_in).saturating_sub(REGISTRY_LEEWAY_SECS)
    } else {
        iat + st.cfg.expires_in
    };
    let jti = st.serial.fetch_add(1, Ordering::SeqCst);
    let claims = serde_json::json!({
        "iss": st.cfg.issuer,
        "sub": user.clone().unwrap_or_default(),
        // distribution 2.8 decodes `aud` as a single string; an array fails.
        "aud": st.cfg.service,
        "exp": exp,
        "nbf": iat,
        "iat": iat,
        "jti": format!("jti-{jti}-{iat}"),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let b64 = base64::engine::general_purpose::STANDARD;
    header.x5c = Some(vec![
        b64.encode(&st.signer.cert_der),
        b64.encode(&st.ca_der),
    ]);
    let key =
        jsonwebtoken::EncodingKey::from_ec_pem(st.signer.key_pem.as_bytes()).expect("signing key");
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign token");

    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": st
            .cfg
            .answered_expires_in
            .clone()
            .unwrap_or(st.cfg.expires_in.into()),
        "issued_at": rfc3339(iat),
    });
    if offline {
        let rt = super::sha256_digest(format!("refresh-{jti}-{iat}-{token}").as_bytes())
            .trim_start_matches("sha256:")
            .to_string();
        st.refresh_tokens
            .lock()
            .unwrap()
            .insert(rt.clone(), user.clone().unwrap_or_default());
        body["refresh_token"] = serde_json::Value::String(rt);
    }
    record(grant, 200, granted);
    response(200, "application/json", body.to_string())
}
