//! `cvmd pull` against real registries through every way of authenticating:
//! anonymous, HTTP Basic over HTTPS with a test CA, and the distribution
//! token flow, with credentials from each source cvmd reads.

use crate::common::cli::{small_image, Run, SealedCvmd};
use crate::common::cred::cred_helper_calls;
use crate::common::image::{pseudo_random, Compression, Format, Image, ImageBuilder, LayerBuilder};
use crate::common::prereq;
use crate::common::proxy::FaultProxy;
use crate::common::registry::push;
use crate::common::token::{Grant, TokenConfig};
use crate::common::{cred_helper, Registry};
use base64::Engine;
use serde_json::json;

const USER: &str = "alice";
const PASS: &str = "pw-Zq81-never-shown";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What a successful pull prints and stores.
fn assert_pulled(run: &Run, cvmd: &SealedCvmd, host: &str, repo: &str, img: &Image) {
    run.assert_ok();
    assert_eq!(
        run.stdout,
        format!("{host}/{repo}:v1@{}\n", img.manifest_digest),
        "{run}"
    );
    cvmd.assert_stored(img, &img.manifest_digest);
    run.assert_never_shows(PASS);
}

/// An HTTPS registry with Basic auth holding `team/app:v1`.
struct Tls {
    reg: Registry,
    img: Image,
    image: String,
}

fn tls() -> Tls {
    let reg = Registry::tls_basic(USER, PASS).expect("registry");
    let img = small_image(Format::Oci, 11);
    push(&reg, "team/app", "v1", &img);
    let image = format!("{}/team/app:v1", reg.host());
    Tls { reg, img, image }
}

impl Tls {
    fn ca(&self) -> String {
        self.reg.ca_pem_path().unwrap().display().to_string()
    }
    fn check(&self, run: &Run, cvmd: &SealedCvmd) {
        assert_pulled(run, cvmd, &self.reg.host(), "team/app", &self.img);
    }
    fn dockerconfigjson(&self) -> String {
        json!({"auths": {self.reg.host(): {"auth": b64(&format!("{USER}:{PASS}"))}}}).to_string()
    }
}

#[test]
fn anonymous_pull_from_a_plain_registry() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = small_image(Format::Oci, 1);
    push(&reg, "lib/anon", "v1", &img);
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &format!("{}/lib/anon:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "lib/anon", &img);
}

/// A minimal outer image has no CA bundle: cvmd still pulls from a
/// plain-HTTP registry and from one CVMD_EXTRA_CERTS vouches for, and
/// warns once that only those are trusted.
#[test]
fn pulls_work_on_a_host_without_system_ca_certificates() {
    require!(prereq::registry());
    let no_cas = |cvmd: &mut SealedCvmd| {
        // Where rustls looks for the system's roots on Linux.
        cvmd.env("SSL_CERT_FILE", "/nonexistent/ca.pem");
        cvmd.env("SSL_CERT_DIR", "/nonexistent/certs");
    };
    let reg = Registry::plain().unwrap();
    let img = small_image(Format::Oci, 1);
    push(&reg, "lib/nocas", "v1", &img);
    let mut cvmd = SealedCvmd::new();
    no_cas(&mut cvmd);
    let run = cvmd.pull(
        &format!("{}/lib/nocas:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "lib/nocas", &img);
    assert!(
        run.stderr.contains("no system CA certificates"),
        "{}",
        run.stderr
    );

    let t = tls();
    let mut cvmd = SealedCvmd::new();
    no_cas(&mut cvmd);
    cvmd.write_docker_config(
        &json!({"auths": {t.reg.host(): {"auth": b64(&format!("{USER}:{PASS}"))}}}),
    );
    let run = cvmd.pull(&t.image, &["--extra-certs", &t.ca()]);
    t.check(&run, &cvmd);
}

#[test]
fn basic_over_tls_with_ca_file_and_config_json_auth_field() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(
        &json!({"auths": {t.reg.host(): {"auth": b64(&format!("{USER}:{PASS}"))}}}),
    );
    let run = cvmd.pull(&t.image, &["--extra-certs", &t.ca()]);
    t.check(&run, &cvmd);
}

#[test]
fn basic_over_tls_with_ca_folder_and_config_json_username_password() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    let pem = std::fs::read(t.reg.ca_pem_path().unwrap()).unwrap();
    cvmd.write_file("certs/registry-ca.crt", pem);
    // The key as `docker login` writes it for a URL, scheme and path included.
    cvmd.write_docker_config(&json!({"auths": {
        format!("https://{}/v2/", t.reg.host()): {"username": USER, "password": PASS}
    }}));
    let folder = cvmd.home.path().join("certs");
    let run = cvmd.pull(&t.image, &["--extra-certs", folder.to_str().unwrap()]);
    t.check(&run, &cvmd);
}

#[test]
fn basic_over_tls_with_inline_dockerconfigjson_pull_secret() {
    require!(prereq::registry());
    let t = tls();
    let mut cvmd = SealedCvmd::new();
    cvmd.env("CVMD_PULL_SECRET", t.dockerconfigjson())
        .env("CVMD_EXTRA_CERTS", t.ca());
    let run = cvmd.pull(&t.image, &[]);
    t.check(&run, &cvmd);
}

#[test]
fn basic_over_tls_with_pull_secret_file() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    let secret = cvmd.write_file("secret/.dockerconfigjson", t.dockerconfigjson());
    let run = cvmd.pull(
        &t.image,
        &[
            "--pull-secret",
            secret.to_str().unwrap(),
            "--extra-certs",
            &t.ca(),
        ],
    );
    t.check(&run, &cvmd);
}

#[test]
fn basic_over_tls_with_legacy_dockercfg_pull_secret() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    let legacy = json!({
        format!("https://{}", t.reg.host()): {
            "auth": b64(&format!("{USER}:{PASS}")),
            "email": "alice@example.com"
        }
    });
    let secret = cvmd.write_file(".dockercfg", legacy.to_string());
    let run = cvmd.pull(
        &t.image,
        &[
            "--pull-secret",
            secret.to_str().unwrap(),
            "--extra-certs",
            &t.ca(),
        ],
    );
    t.check(&run, &cvmd);
}

#[test]
fn basic_over_tls_with_kubernetes_secret_object() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    let object = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": "coder"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&t.dockerconfigjson())}
    });
    let secret = cvmd.write_file("regcred.json", object.to_string());
    let run = cvmd.pull(
        &t.image,
        &[
            "--pull-secret",
            secret.to_str().unwrap(),
            "--extra-certs",
            &t.ca(),
        ],
    );
    t.check(&run, &cvmd);
}

#[test]
fn envbox_aliases_coder_image_pull_secret_and_coder_extra_certs_path() {
    require!(prereq::registry());
    let t = tls();
    let mut cvmd = SealedCvmd::new();
    let pem = std::fs::read(t.reg.ca_pem_path().unwrap()).unwrap();
    cvmd.write_file("coder-certs/ca.pem", pem);
    let folder = cvmd.home.path().join("coder-certs");
    cvmd.env("CODER_IMAGE_PULL_SECRET", t.dockerconfigjson())
        .env("CODER_EXTRA_CERTS_PATH", &folder);
    let run = cvmd.pull(&t.image, &[]);
    t.check(&run, &cvmd);
}

#[test]
fn a_secret_without_the_host_does_not_hide_config_json_credentials() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    let other = json!({"auths": {"other.example:5000": {"username": "x", "password": "y"}}});
    cvmd.write_docker_config(
        &json!({"auths": {t.reg.host(): {"username": USER, "password": PASS}}}),
    );
    let run = cvmd.pull(
        &t.image,
        &[
            "--pull-secret",
            &other.to_string(),
            "--extra-certs",
            &t.ca(),
        ],
    );
    t.check(&run, &cvmd);
}

#[test]
fn a_config_json_without_the_host_does_not_hide_pull_secret_credentials() {
    require!(prereq::registry());
    let t = tls();
    let cvmd = SealedCvmd::new();
    // Exists, parses, and names other hosts only (a credsStore-less file).
    cvmd.write_docker_config(&json!({
        "auths": {"other.example:5000": {"username": "x", "password": "y"}},
        "credHelpers": {"elsewhere.example": "missing-helper"}
    }));
    let run = cvmd.pull(
        &t.image,
        &[
            "--pull-secret",
            &t.dockerconfigjson(),
            "--extra-certs",
            &t.ca(),
        ],
    );
    t.check(&run, &cvmd);
}

/// A token-auth registry (plain HTTP) with `team/app:v1` of three layers.
fn token_registry(cfg: TokenConfig, repo: &str) -> (Registry, Image) {
    let reg = Registry::token(cfg).expect("registry");
    let mut b = ImageBuilder::new(Format::Docker);
    for i in 0..3u64 {
        b = b.layer(
            LayerBuilder::new()
                .file(&format!("f{i}"), &pseudo_random(16 << 10, 100 + i), 0o644)
                .build(Compression::Gzip),
        );
    }
    let img = b.build();
    push(&reg, repo, "v1", &img);
    (reg, img)
}

#[test]
fn bearer_token_with_basic_credentials_is_fetched_once_and_reused() {
    require!(prereq::registry());
    let (reg, img) = token_registry(TokenConfig::new().user(USER, PASS), "team/app");
    let ts = reg.token_server().unwrap();
    let before = ts.request_count();
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(&json!({"auths": {reg.host(): {"username": USER, "password": PASS}}}));
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "team/app", &img);
    // Manifest, config and three layers share the pull scope: one token.
    let ours = &ts.requests()[before..];
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].grant, Grant::Basic(USER.into()));
    assert_eq!(ours[0].scopes, ["repository:team/app:pull"]);
}

#[test]
fn anonymous_bearer_token_on_a_public_repository() {
    require!(prereq::registry());
    let cfg = TokenConfig::new().user(USER, PASS).public_repo("pub/img");
    let (reg, img) = token_registry(cfg, "pub/img");
    let ts = reg.token_server().unwrap();
    let before = ts.request_count();
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &format!("{}/pub/img:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "pub/img", &img);
    let ours = &ts.requests()[before..];
    assert!(!ours.is_empty() && ours.len() <= 2, "{ours:?}");
    assert!(ours.iter().all(|r| r.grant == Grant::Anonymous), "{ours:?}");
}

/// A refresh token from the token server's password grant, as `docker
/// login` stores it in `identitytoken`.
fn refresh_token(reg: &Registry) -> String {
    reg.token_server()
        .unwrap()
        .refresh_token(USER, PASS, "team/app")
}

#[test]
fn identity_token_from_config_json_uses_the_refresh_token_grant() {
    require!(prereq::registry());
    let (reg, img) = token_registry(TokenConfig::new().user(USER, PASS), "team/app");
    let ts = reg.token_server().unwrap();
    let rt = refresh_token(&reg);
    let before = ts.request_count();
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(&json!({"auths": {reg.host(): {"auth": "", "identitytoken": rt}}}));
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "team/app", &img);
    run.assert_never_shows(&rt);
    let ours = &ts.requests()[before..];
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].method, "POST");
    assert_eq!(ours[0].grant, Grant::RefreshToken(USER.into()));
}

#[test]
fn cred_helpers_entry_is_run_from_path() {
    require!(prereq::registry());
    let (reg, img) = token_registry(TokenConfig::new().user(USER, PASS), "team/app");
    let helpers = tempfile::tempdir().unwrap();
    cred_helper(helpers.path(), "fake", &reg.host(), USER, PASS);
    let mut cvmd = SealedCvmd::new();
    cvmd.path_prefix(helpers.path());
    cvmd.write_docker_config(&json!({"credHelpers": {reg.host(): "fake"}}));
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "team/app", &img);
    let calls = cred_helper_calls(helpers.path(), "fake");
    assert_eq!(
        calls,
        [format!("get {}", reg.host())],
        "looked up once per host"
    );
    let ts = reg.token_server().unwrap();
    assert_eq!(
        ts.requests().last().unwrap().grant,
        Grant::Basic(USER.into())
    );
}

#[test]
fn creds_store_helper_is_run_from_path() {
    require!(prereq::registry());
    let (reg, img) = token_registry(TokenConfig::new().user(USER, PASS), "team/app");
    let helpers = tempfile::tempdir().unwrap();
    cred_helper(helpers.path(), "teststore", &reg.host(), USER, PASS);
    let mut cvmd = SealedCvmd::new();
    cvmd.path_prefix(helpers.path());
    cvmd.write_docker_config(&json!({"auths": {reg.host(): {}}, "credsStore": "teststore"}));
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "team/app", &img);
    assert_eq!(cred_helper_calls(helpers.path(), "teststore").len(), 1);
}

#[test]
fn a_token_that_expires_mid_pull_is_renewed() {
    require!(prereq::registry());
    // The registry rejects each token 2 s after it is issued.
    let cfg = TokenConfig::new()
        .user(USER, PASS)
        .expires_in(2)
        .enforce_expiry(true);
    let reg = Registry::token(cfg).expect("registry");
    // A 1 MiB layer that takes ~2.6 s through the throttled proxy, then a
    // small one whose request comes after the first token has expired.
    let img = ImageBuilder::new(Format::Oci)
        .layer(crate::common::image::Layer::random(
            "big",
            1,
            5,
            Compression::None,
        ))
        .layer(
            LayerBuilder::new()
                .file("small", b"small", 0o644)
                .build(Compression::Gzip),
        )
        .build();
    push(&reg, "team/app", "v1", &img);
    let proxy = FaultProxy::start(&reg.url());
    let ts = reg.token_server().unwrap();
    let before = ts.request_count();
    proxy.throttle_blobs(400 << 10);
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(
        &json!({"auths": {proxy.host(): {"username": USER, "password": PASS}}}),
    );
    let run = cvmd.pull(
        &format!("{}/team/app:v1", proxy.host()),
        &[
            "--insecure-registries",
            &proxy.host(),
            "--pull-concurrency",
            "1",
        ],
    );
    assert_pulled(&run, &cvmd, &proxy.host(), "team/app", &img);
    let ours = &ts.requests()[before..];
    assert!(ours.len() >= 2, "the token was never renewed: {ours:?}");
    assert!(
        ours.iter()
            .all(|r| r.status == 200 && r.grant == Grant::Basic(USER.into())),
        "{ours:?}"
    );
}

#[test]
fn a_token_lifetime_too_large_for_a_clock_is_clamped_not_a_panic() {
    require!(prereq::registry());
    for answered in [json!(u64::MAX), json!(-1), json!(1e300)] {
        let cfg = TokenConfig::new()
            .user(USER, PASS)
            .answer_expires_in(answered.clone());
        let reg = Registry::token(cfg).expect("registry");
        let img = small_image(Format::Oci, 12);
        push(&reg, "team/app", "v1", &img);
        let cvmd = SealedCvmd::new();
        cvmd.write_docker_config(
            &json!({"auths": {reg.host(): {"username": USER, "password": PASS}}}),
        );
        let run = cvmd.pull(
            &format!("{}/team/app:v1", reg.host()),
            &["--insecure-registries", &reg.host()],
        );
        assert!(
            !run.stderr.contains("panicked"),
            "expires_in {answered}: {run}"
        );
        assert_pulled(&run, &cvmd, &reg.host(), "team/app", &img);
    }
}

#[test]
fn an_https_registry_naming_a_plain_http_realm_gets_no_credentials() {
    require!(prereq::registry());
    // The registry over HTTPS, its token server (the realm) over plain HTTP.
    let (reg, _img) = token_registry(
        TokenConfig::new().user(USER, PASS).registry_tls(true),
        "team/app",
    );
    let ts = reg.token_server().unwrap();
    let before = ts.request_count();
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(&json!({"auths": {reg.host(): {"username": USER, "password": PASS}}}));
    let ca = reg.ca_pem_path().unwrap().display().to_string();
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--extra-certs", &ca],
    );
    let line = run.error_line();
    assert!(
        line.contains(&format!(
            "registry {} named the token realm {}, which cvmd refuses: it is plain HTTP while the registry is reached over HTTPS",
            reg.host(),
            ts.realm()
        )),
        "{run}"
    );
    assert_eq!(
        ts.request_count(),
        before,
        "the credentials went to the plain-HTTP realm: {:?}",
        &ts.requests()[before..]
    );
    run.assert_never_shows(PASS);
    run.assert_never_shows(&b64(&format!("{USER}:{PASS}")));
}

#[test]
fn a_fetched_token_is_logged_by_registry_and_realm_never_by_value() {
    require!(prereq::registry());
    let (reg, img) = token_registry(TokenConfig::new().user(USER, PASS), "team/app");
    let ts = reg.token_server().unwrap();
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(&json!({"auths": {reg.host(): {"username": USER, "password": PASS}}}));
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--insecure-registries", &reg.host(), "--log-format", "text"],
    );
    assert_pulled(&run, &cvmd, &reg.host(), "team/app", &img);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("fetched a registry token"))
        .unwrap_or_else(|| panic!("no token line:\n{run}"));
    assert!(
        line.contains(&format!("registry=\"{}\"", reg.host()))
            && line.contains(&format!("realm={}", ts.realm()))
            && line.contains("scope=\"repository:team/app:pull\""),
        "{line}"
    );
    // The harness's tokens are JWTs: base64url JSON, starting `eyJ`.
    run.assert_never_shows("eyJ");
    run.assert_never_shows("Bearer");
}

/// A network namespace of the test's own, held by a sleeping process.
struct Netns(std::process::Child);

impl Netns {
    fn new() -> Netns {
        let holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("unshare --net");
        let ns = Netns(holder);
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(crate::common::wait_until(
            std::time::Duration::from_secs(5),
            || std::fs::read_link(ns.path()).is_ok_and(|l| l != own)
        ));
        ns
    }
    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
    fn sh(&self, script: &str) {
        let ok = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["sh", "-c", script])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }
    /// `cmd` run inside the namespace, its environment kept.
    fn wrap(&self, cmd: &std::process::Command) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }
    /// A TCP listener bound inside the namespace, answering `reply` to each
    /// connection; the receiver gets a line per connection's request.
    fn serve(&self, addr: &str, reply: String) -> std::sync::mpsc::Receiver<String> {
        use std::io::{BufRead, Write};
        let ns = std::fs::File::open(self.path()).unwrap();
        let addr = addr.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = std::net::TcpListener::bind(&addr).unwrap();
            bound_tx.send(()).unwrap();
            for conn in listener.incoming().flatten() {
                let mut first = String::new();
                let _ = std::io::BufReader::new(&conn).read_line(&mut first);
                let _ = tx.send(first.trim().to_string());
                let _ = (&conn).write_all(reply.as_bytes());
            }
        });
        bound_rx.recv().unwrap();
        rx
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_registry_cannot_send_cvmd_to_a_link_local_metadata_address_as_its_realm() {
    require!(prereq::root("a network namespace of its own"));
    require!(prereq::tool("nsenter"));
    // In a namespace of the test's own: a hostile registry on 127.0.0.1 whose
    // challenge names a realm on 169.254.169.254, where a metadata-style
    // listener waits.
    let ns = Netns::new();
    ns.sh("ip link set lo up && ip addr add 169.254.169.254/32 dev lo");
    let challenge = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://169.254.169.254/latest/meta-data/iam\",service=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let registry = ns.serve("127.0.0.1:5999", challenge.to_string());
    let metadata = ns.serve(
        "169.254.169.254:80",
        "HTTP/1.1 200 OK\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{\"token\":\"node-creds\"}".to_string(),
    );
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(
        &json!({"auths": {"127.0.0.1:5999": {"username": USER, "password": PASS}}}),
    );
    let cmd = cvmd.command(&[
        "pull",
        "127.0.0.1:5999/team/app:v1",
        "--insecure-registries",
        "127.0.0.1:5999",
        "--pull-retries",
        "1",
    ]);
    let out = ns.wrap(&cmd).output().unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(registry.try_recv().is_ok(), "the registry was asked");
    if let Ok(request) = metadata.try_recv() {
        panic!("cvmd fetched the link-local realm ({request}):\n{run}");
    }
    let line = run.error_line();
    assert!(
        line.contains("registry 127.0.0.1:5999 named the token realm http://169.254.169.254/latest/meta-data/iam, which cvmd refuses: it points at a link-local address"),
        "{run}"
    );
    run.assert_never_shows(PASS);
}

#[test]
fn a_base64_pull_secret_is_refused_without_being_echoed() {
    require!(prereq::registry());
    let t = tls();
    // The Secret's .dockerconfigjson as Kubernetes stores it: base64.
    let secret = b64(&t.dockerconfigjson());
    let mut cvmd = SealedCvmd::new();
    cvmd.env("CVMD_PULL_SECRET", &secret);
    let run = cvmd.pull(&t.image, &["--extra-certs", &t.ca()]);
    assert_ne!(run.code, Some(0), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "pull secret: the value ({} bytes, not shown) is not JSON",
            secret.len()
        )) && run.stderr.contains("it is base64-encoded JSON: decode it"),
        "{run}"
    );
    run.assert_never_shows(&secret);
    run.assert_never_shows(&secret[..24]);
    run.assert_never_shows(PASS);
}
