//! A real `docker-registry` (distribution 2.8) process per test.

use super::pki::{write_file, Ca};
use super::token::{TokenConfig, TokenServer};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        pass: String,
    },
    Token(TokenConfig),
}

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub tls: bool,
    pub auth: Auth,
    /// `http.relativeurls`: upload `Location`s become relative paths.
    pub relative_urls: bool,
    /// Listen here instead of on a free port of 127.0.0.1 (an address the
    /// test gave a network namespace of its own).
    pub listen: Option<SocketAddr>,
    /// Run the registry in this network namespace (`/proc/PID/ns/net`);
    /// readiness is then probed from a thread inside it.
    pub netns: Option<PathBuf>,
}

pub struct Registry {
    child: Child,
    addr: SocketAddr,
    netns: Option<PathBuf>,
    tls: bool,
    ca_pem: Option<PathBuf>,
    basic: Option<(String, String)>,
    token: Option<TokenServer>,
    stderr_path: PathBuf,
    config_path: PathBuf,
    // Last: removed after the process is killed.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Plain HTTP, no auth.
    pub fn plain() -> io::Result<Registry> {
        Self::start(RegistryOptions::default())
    }

    /// HTTPS with a test CA (see [`Registry::ca_pem_path`]) and htpasswd auth.
    pub fn tls_basic(user: &str, pass: &str) -> io::Result<Registry> {
        Self::start(RegistryOptions {
            tls: true,
            auth: Auth::Basic {
                user: user.into(),
                pass: pass.into(),
            },
            ..Default::default()
        })
    }

    /// Token auth against a harness-run token server; HTTPS if
    /// `cfg.registry_tls`.
    pub fn token(cfg: TokenConfig) -> io::Result<Registry> {
        Self::start(RegistryOptions {
            tls: cfg.registry_tls,
            auth: Auth::Token(cfg),
            ..Default::default()
        })
    }

    pub fn start(opts: RegistryOptions) -> io::Result<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "docker-registry not installed (apt-get install docker-registry)",
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("cvmd-registry-")
            .tempdir()?;
        let addr = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], super::free_port())));
        let needs_ca = opts.tls || matches!(opts.auth, Auth::Token(_));
        let ca = needs_ca.then(|| Ca::new("cvmd test CA"));
        let ca_pem = ca
            .as_ref()
            .map(|ca| write_file(dir.path(), "ca.pem", ca.pem()));

        let mut http = format!(
            "http:\n  addr: {addr}\n  relativeurls: {}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
            opts.relative_urls
        );
        if opts.tls {
            let leaf = ca.as_ref().expect("ca").server_leaf();
            let cert = write_file(dir.path(), "server.pem", &leaf.cert_pem);
            let key = write_file(dir.path(), "server.key", &leaf.key_pem);
            http.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }

        let mut basic = None;
        let mut token = None;
        let auth = match &opts.auth {
            Auth::None => String::new(),
            Auth::Basic { user, pass } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()?;
                if !out.status.success() {
                    return Err(io::Error::other(format!(
                        "htpasswd failed (apt-get install apache2-utils): {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                let path = write_file(dir.path(), "htpasswd", &out.stdout);
                basic = Some((user.clone(), pass.clone()));
                format!(
                    "auth:\n  htpasswd:\n    realm: cvmd-test\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token(cfg) => {
                let ts = TokenServer::start(cfg.clone(), ca.as_ref().expect("ca"));
                let s = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    ts.realm(),
                    cfg.service,
                    cfg.issuer,
                    ca_pem.as_ref().expect("ca pem").display()
                );
                token = Some(ts);
                s
            }
        };

        // Info level (not the access log) so token rejections are explained
        // in stderr; upload purging off so no background work races tests.
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n{http}{auth}",
            dir.path().join("data").display()
        );
        let config_path = write_file(dir.path(), "config.yml", &config);
        let stderr_path = dir.path().join("registry.stderr");
        let child = spawn(&config_path, &stderr_path, opts.netns.as_deref())?;

        let mut reg = Registry {
            child,
            addr,
            netns: opts.netns.clone(),
            tls: opts.tls,
            ca_pem,
            basic,
            token,
            stderr_path,
            config_path,
            dir,
        };
        reg.wait_ready(Duration::from_secs(15));
        Ok(reg)
    }

    /// Kills the registry (its storage stays), as an outage would.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address, config and storage after
    /// [`Registry::stop`]; returns once it answers.
    pub fn start_again(&mut self) -> io::Result<()> {
        self.stop();
        self.child = spawn(&self.config_path, &self.stderr_path, self.netns.as_deref())?;
        self.wait_ready(Duration::from_secs(15));
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let client = super::http_client(self.ca_pem.as_deref());
        let url = format!("{}/v2/", self.url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited early ({status}):\n{}\nconfig:\n{}",
                    self.stderr_log(),
                    std::fs::read_to_string(&self.config_path).unwrap_or_default()
                );
            }
            let c = client.clone();
            let u = url.clone();
            let answered = in_netns(self.netns.as_deref(), move || {
                super::block_on(async move { c.get(&u).send().await.is_ok() })
            });
            if answered {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry not ready after {timeout:?}:\n{}",
                    self.stderr_log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `127.0.0.1:PORT`, or the address given as `listen`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` or `https://…`
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// CA that signed the TLS server cert (and the token signer). `None` for
    /// plain registries without token auth.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    /// The htpasswd user, or the first token-server user.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.basic
            .clone()
            .or_else(|| self.token.as_ref()?.config().users.first().cloned())
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// Storage root on disk (`docker/registry/v2/...` below it once used).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the registry wrote so far; for assertion messages.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A client for this registry using its credentials and CA.
    pub fn client(&self) -> super::push::RegistryClient {
        let creds = self.credentials();
        super::push::RegistryClient::new(
            &self.url(),
            creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            self.ca_pem_path(),
        )
    }
}

/// Starts `docker-registry serve CONFIG` with its output appended to
/// `log`, inside `netns` when given (by `nsenter`, which execs the registry
/// in place, so the child is the registry itself).
fn spawn(config: &Path, log: &Path, netns: Option<&Path>) -> io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(REGISTRY_BIN);
            c
        }
        None => Command::new(REGISTRY_BIN),
    };
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
}

/// Runs `f` on a thread that joined `netns` (network namespaces are per
/// thread), or right here without one.
pub fn in_netns<T: Send>(netns: Option<&Path>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = netns else { return f() };
    let ns = std::fs::File::open(ns).expect("open the network namespace");
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the network namespace panicked")
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `img` to `reg` as `repo:tag` and returns the reference cvmd pulls.
pub fn push(reg: &Registry, repo: &str, tag: &str, img: &super::image::Image) -> String {
    let client = reg.client();
    super::block_on(async { client.push_image(repo, tag, img).await })
        .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e}"));
    format!("{}/{repo}:{tag}", reg.host())
}
