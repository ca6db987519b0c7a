//! Where registry credentials come from: a Kubernetes pull secret
//! (`.dockerconfigjson` or legacy `.dockercfg`, as a file or inline JSON) and
//! a docker `config.json` (`auths`, `credHelpers`, `credsStore`).
//!
//! Hand-written rather than the `docker_credential` crate: that crate reads
//! only the default config location and knows neither pull secrets nor the
//! legacy format. Sources are consulted in order and the first one that has
//! an entry for the host wins, so a source without an entry never hides one
//! that another source provides.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

/// A string that never prints itself: credentials must not reach a log line,
/// an error message or the API.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: Secret,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the
    /// token realm with `grant_type=refresh_token`.
    IdentityToken {
        username: String,
        token: Secret,
    },
    /// A bearer token to send as it is (docker's `registrytoken`).
    RegistryToken(Secret),
}

impl Credential {
    /// Where a credential came from, for messages that must not show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Basic { .. } => "username/password",
            Credential::IdentityToken { .. } => "identity token",
            Credential::RegistryToken(_) => "registry token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("pull secret: {0} (expected a .dockerconfigjson or .dockercfg JSON, inline or as a file path)")]
    PullSecret(String),
    #[error("docker config {path}: {why}")]
    DockerConfig { path: PathBuf, why: String },
    #[error("credential helper docker-credential-{helper} for {host}: {why}")]
    Helper {
        helper: String,
        host: String,
        why: String,
    },
}

/// A value that is neither JSON nor a file to read: often the secret itself
/// in another form (the base64 a Kubernetes Secret stores), so it is
/// described, never echoed (the message reaches the log, the termination
/// log and `cvmctl status`).
fn not_json_nor_file(value: &str, e: &std::io::Error) -> CredentialError {
    use base64::Engine as _;
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let base64_json = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some();
    let what = if base64_json {
        "it is base64-encoded JSON: decode it (base64 -d) and pass the JSON, or mount the Secret and pass the file's path"
    } else {
        "pass the .dockerconfigjson JSON itself, or the path of a readable file holding it (e.g. a mounted Secret's /secrets/.dockerconfigjson)"
    };
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("{:?}", e.kind()),
    };
    CredentialError::PullSecret(format!(
        "the value ({} bytes, not shown) is not JSON (it does not start with '{{') and not a readable file path ({why}); {what}",
        value.len()
    ))
}

/// One parsed source of credentials.
#[derive(Debug, Default, Clone)]
pub struct CredentialSource {
    /// What to call it in messages (`pull secret`, `/root/.docker/config.json`).
    pub name: String,
    auths: BTreeMap<String, AuthEntry>,
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<Secret>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    identitytoken: Option<Secret>,
    #[serde(default)]
    registrytoken: Option<Secret>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

impl CredentialSource {
    /// A pull secret given as inline JSON or as a path to a file holding it.
    /// Accepts `.dockerconfigjson` (`{"auths":{...}}`), legacy `.dockercfg`
    /// (`{"host":{"auth":...}}`) and a whole Kubernetes Secret object.
    pub fn from_pull_secret(value: &str) -> Result<Self, CredentialError> {
        let trimmed = value.trim_start();
        let text = if trimmed.starts_with('{') {
            value.to_string()
        } else {
            std::fs::read_to_string(value).map_err(|e| not_json_nor_file(value, &e))?
        };
        // Never echo the JSON: it is the secret.
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            CredentialError::PullSecret(format!(
                "not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let json = unwrap_kubernetes_secret(json)?;
        let auths_value = match json.get("auths") {
            Some(a) => a.clone(),
            None => json,
        };
        let auths: BTreeMap<String, AuthEntry> = serde_json::from_value(auths_value)
            .map_err(|_| CredentialError::PullSecret("entries must map a registry host to {\"auth\": ...} or {\"username\", \"password\"}".into()))?;
        Ok(CredentialSource {
            name: "pull secret".into(),
            auths,
            ..Default::default()
        })
    }

    /// A docker `config.json`. A missing file is an empty source.
    pub fn from_docker_config(path: &Path) -> Result<Self, CredentialError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(CredentialSource {
                    name: path.display().to_string(),
                    ..Default::default()
                })
            }
            Err(e) => {
                return Err(CredentialError::DockerConfig {
                    path: path.into(),
                    why: e.to_string(),
                })
            }
        };
        let file: DockerConfigFile =
            serde_json::from_str(&text).map_err(|e| CredentialError::DockerConfig {
                path: path.into(),
                why: format!(
                    "not a docker config (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            })?;
        Ok(CredentialSource {
            name: path.display().to_string(),
            auths: file.auths,
            cred_helpers: file.cred_helpers,
            creds_store: file.creds_store,
        })
    }

    /// The credential this source holds for `host`, if any. `helper_path`
    /// is where `docker-credential-*` helpers are looked up (PATH if None).
    pub fn lookup(
        &self,
        host: &str,
        helper_path: Option<&Path>,
    ) -> Result<Option<Credential>, CredentialError> {
        if let Some(helper) = find_host(&self.cred_helpers, host) {
            return run_helper(helper, host, helper_path);
        }
        if let Some(entry) = find_host(&self.auths, host) {
            if let Some(cred) = entry_credential(entry, host)? {
                return Ok(Some(cred));
            }
        }
        match &self.creds_store {
            Some(store) if !store.is_empty() => run_helper(store, host, helper_path),
            _ => Ok(None),
        }
    }
}

/// A Secret object (`{"kind":"Secret","data":{".dockerconfigjson":"<b64>"}}`)
/// is unwrapped to the JSON it carries.
fn unwrap_kubernetes_secret(json: serde_json::Value) -> Result<serde_json::Value, CredentialError> {
    if json.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
        return Ok(json);
    }
    let data = json.get("data").and_then(|d| d.as_object());
    let encoded = data
        .and_then(|d| d.get(".dockerconfigjson").or_else(|| d.get(".dockercfg")))
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            CredentialError::PullSecret(
                "Secret has no data.\".dockerconfigjson\" or data.\".dockercfg\"".into(),
            )
        })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| CredentialError::PullSecret("Secret data is not base64".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| CredentialError::PullSecret("Secret data is not JSON".into()))
}

/// Config keys are written many ways (`https://index.docker.io/v1/`,
/// `reg:5000`, `http://reg:5000/v2/`); compare their host parts.
fn normalise_host(key: &str) -> String {
    let no_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = no_scheme
        .split('/')
        .next()
        .unwrap_or(no_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            super::reference::DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

fn find_host<'a, V>(map: &'a BTreeMap<String, V>, host: &str) -> Option<&'a V> {
    let want = normalise_host(host);
    map.iter()
        .find(|(k, _)| normalise_host(k) == want)
        .map(|(_, v)| v)
}

fn entry_credential(entry: &AuthEntry, host: &str) -> Result<Option<Credential>, CredentialError> {
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(Credential::RegistryToken(token.clone())));
    }
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.0.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.0.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                CredentialError::PullSecret(format!(
                    "the \"auth\" field for {host} is not base64 of user:password"
                ))
            })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            CredentialError::PullSecret(format!(
                "the \"auth\" field for {host} has no ':' between user and password"
            ))
        })?;
        username = Some(u.to_string());
        password = Some(Secret(p.to_string()));
    }
    if let Some(token) = &entry.identitytoken {
        return Ok(Some(Credential::IdentityToken {
            username: username.unwrap_or_default(),
            token: token.clone(),
        }));
    }
    Ok(match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Some(Credential::Basic { username, password })
        }
        _ => None,
    })
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: Secret,
}

/// The docker credential helper protocol: `docker-credential-NAME get`, the
/// server URL on stdin, `{"ServerURL","Username","Secret"}` on stdout.
fn run_helper(
    helper: &str,
    host: &str,
    helper_path: Option<&Path>,
) -> Result<Option<Credential>, CredentialError> {
    let err = |why: String| CredentialError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        why,
    };
    if helper.is_empty() || helper.contains('/') {
        return Err(err("helper names may not be empty or contain '/'".into()));
    }
    let program = match helper_path {
        Some(dir) => dir.join(format!("docker-credential-{helper}")),
        None => PathBuf::from(format!("docker-credential-{helper}")),
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {}: {e}", program.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is not an error here.
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("cannot wait for the helper: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // The protocol's way of saying "no entry": not an error.
        if said.contains("credentials not found") {
            return Ok(None);
        }
        let first_line = said
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(err(format!("exited with {}: {first_line}", out.status)));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| err("did not print {\"Username\":..,\"Secret\":..}".into()))?;
    // Docker's convention: the user name `<token>` marks an identity token.
    Ok(Some(if answer.username == "<token>" {
        Credential::IdentityToken {
            username: String::new(),
            token: answer.secret,
        }
    } else {
        Credential::Basic {
            username: answer.username,
            password: answer.secret,
        }
    }))
}

/// All configured sources, in the order they are consulted.
#[derive(Debug, Default, Clone)]
pub struct Keychain {
    pub sources: Vec<CredentialSource>,
    pub helper_path: Option<PathBuf>,
}

impl Keychain {
    /// The first credential any source has for `host`.
    pub fn lookup(&self, host: &str) -> Result<Option<(Credential, String)>, CredentialError> {
        for source in &self.sources {
            if let Some(cred) = source.lookup(host, self.helper_path.as_deref())? {
                return Ok(Some((cred, source.name.clone())));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: Secret::new(p),
        }
    }

    #[test]
    fn dockerconfigjson_inline_with_auth_field() {
        let json = format!(
            r#"{{"auths":{{"reg.io:5000":{{"auth":"{}"}}}}}}"#,
            b64("bob:pa:ss")
        );
        let src = CredentialSource::from_pull_secret(&json).unwrap();
        assert_eq!(
            src.lookup("reg.io:5000", None).unwrap(),
            Some(basic("bob", "pa:ss"))
        );
        assert_eq!(src.lookup("other.io", None).unwrap(), None);
    }

    #[test]
    fn legacy_dockercfg_and_hub_aliases() {
        let json = format!(
            r#"{{"https://index.docker.io/v1/":{{"auth":"{}","email":"x@y"}}}}"#,
            b64("u:p")
        );
        let src = CredentialSource::from_pull_secret(&json).unwrap();
        assert_eq!(
            src.lookup("docker.io", None).unwrap(),
            Some(basic("u", "p"))
        );
    }

    #[test]
    fn kubernetes_secret_object_is_unwrapped() {
        let inner = r#"{"auths":{"r.io":{"username":"a","password":"b"}}}"#;
        let json = format!(
            r#"{{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/dockerconfigjson","data":{{".dockerconfigjson":"{}"}}}}"#,
            b64(inner)
        );
        let src = CredentialSource::from_pull_secret(&json).unwrap();
        assert_eq!(src.lookup("r.io", None).unwrap(), Some(basic("a", "b")));
    }

    #[test]
    fn pull_secret_from_file_and_errors_never_echo_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.json");
        std::fs::write(
            &path,
            r#"{"auths":{"http://r.io/v2/":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        let src = CredentialSource::from_pull_secret(path.to_str().unwrap()).unwrap();
        assert!(matches!(
            src.lookup("r.io", None).unwrap(),
            Some(Credential::IdentityToken { .. })
        ));

        let e = CredentialSource::from_pull_secret(
            r#"{"auths": {"r.io": {"auth": "hunter2-not-b64!"}}"#,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let src =
            CredentialSource::from_pull_secret(r#"{"auths":{"r.io":{"auth":"hunter2-not-b64!"}}}"#)
                .unwrap();
        let e = src.lookup("r.io", None).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("r.io"), "{e}");
    }

    #[test]
    fn a_secret_that_is_neither_json_nor_a_path_is_described_not_echoed() {
        use base64::Engine as _;
        let json = r#"{"auths":{"r.io":{"auth":"c2VjcmV0LXBhc3N3b3Jk"}}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let e = CredentialSource::from_pull_secret(&b64)
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&b64) && !e.contains("c2VjcmV0"), "{e}");
        assert!(
            e.contains(&format!("({} bytes, not shown)", b64.len())),
            "{e}"
        );
        assert!(
            e.contains("not JSON") && e.contains("not a readable file path (no such file)"),
            "{e}"
        );
        assert!(e.contains("base64-encoded JSON: decode it"), "{e}");

        let e = CredentialSource::from_pull_secret("hunter2-plain-password")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            e.contains("(22 bytes, not shown)") && e.contains("the path of a readable file"),
            "{e}"
        );

        // A path to a missing file is not echoed either: it could be the
        // secret mistaken for one.
        let e = CredentialSource::from_pull_secret("/no/such/dir/.dockerconfigjson")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = basic("bob", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_source_without_the_host_does_not_hide_another() {
        let secret = CredentialSource::from_pull_secret(
            r#"{"auths":{"elsewhere.io":{"username":"x","password":"y"}}}"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"auths":{"r.io":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let empty_cfg = dir.path().join("empty.json");
        std::fs::write(&empty_cfg, r#"{"auths":{}}"#).unwrap();
        let chain = Keychain {
            sources: vec![
                secret,
                CredentialSource::from_docker_config(&empty_cfg).unwrap(),
                CredentialSource::from_docker_config(&cfg).unwrap(),
                CredentialSource::from_docker_config(&dir.path().join("missing.json")).unwrap(),
            ],
            helper_path: None,
        };
        let (cred, from) = chain.lookup("r.io").unwrap().unwrap();
        assert_eq!(cred, basic("a", "b"));
        assert!(from.ends_with("config.json"));
        assert!(chain.lookup("nowhere.io").unwrap().is_none());
    }

    #[test]
    fn cred_helpers_and_creds_store() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(format!("docker-credential-{name}"));
            std::fs::write(&p, format!("#!/bin/sh\nread host\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "one",
            r#"echo "{\"ServerURL\":\"$host\",\"Username\":\"helper-user\",\"Secret\":\"s1\"}""#,
        );
        script(
            "store",
            r#"if [ "$host" = "s.io" ]; then echo '{"Username":"<token>","Secret":"refresh"}'; else echo "credentials not found in native keychain"; exit 1; fi"#,
        );
        script("broken", "echo boom >&2; exit 3");
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, r#"{"credHelpers":{"h.io":"one","b.io":"broken"},"credsStore":"store","auths":{"a.io":{"auth":""}}}"#).unwrap();
        let src = CredentialSource::from_docker_config(&cfg).unwrap();
        let p = Some(dir.path());
        assert_eq!(
            src.lookup("h.io", p).unwrap(),
            Some(basic("helper-user", "s1"))
        );
        assert!(matches!(
            src.lookup("s.io", p).unwrap(),
            Some(Credential::IdentityToken { .. })
        ));
        assert_eq!(
            src.lookup("a.io", p).unwrap(),
            None,
            "not found in the store is no entry"
        );
        let e = src.lookup("b.io", p).unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-broken") && e.contains("boom"),
            "{e}"
        );
    }
}
