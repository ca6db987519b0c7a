//! Settings: each is a flag, a `CVMD_*` environment variable, an envbox
//! `CODER_*` alias where envbox has the same setting, and a key of the
//! optional TOML file, in that order of precedence. One table below is the
//! single source of the flags, the help text and the validation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::{Arg, ArgMatches};

use crate::registry::client::{ClientOptions, RetryPolicy};
use crate::registry::credentials::{CredentialSource, Keychain};
use crate::registry::manifest::Platform;

pub struct Spec {
    /// The TOML key; the flag is the same with '-' for '_'.
    pub key: &'static str,
    pub env: &'static str,
    pub envbox: Option<&'static str>,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

pub const SETTINGS: &[Spec] = &[
    Spec { key: "config", env: "CVMD_CONFIG", envbox: None, default: None, help: "TOML file with settings (keys as the flags, '_' for '-')" },
    Spec { key: "image", env: "CVMD_IMAGE", envbox: Some("CODER_INNER_IMAGE"), default: None, help: "workspace image reference" },
    Spec { key: "cache_dir", env: "CVMD_CACHE_DIR", envbox: None, default: Some("/var/lib/cvmd"), help: "node-wide content store and layer cache" },
    Spec { key: "state_dir", env: "CVMD_STATE_DIR", envbox: None, default: Some(cvmd_api::socket::DEFAULT_STATE_DIR), help: "this workspace's state (bundle, upper dir)" },
    Spec { key: "persist_dir", env: "CVMD_PERSIST_DIR", envbox: None, default: None, help: "the workspace's persistent volume (a PVC): what CVMD_PERSIST names is kept there across pods [default: nothing persists beyond the state dir]" },
    Spec { key: "persist", env: "CVMD_PERSIST", envbox: None, default: Some("paths"), help: "what CVMD_PERSIST_DIR keeps: paths (each of CVMD_PERSIST_PATHS, mounted from the volume) or disk (the whole writable layer)" },
    Spec { key: "persist_paths", env: "CVMD_PERSIST_PATHS", envbox: None, default: Some("/home,/root,/var/lib/docker"), help: "paths that persist (comma-separated, absolute): on the volume with CVMD_PERSIST=paths, and what a rebase keeps" },
    Spec { key: "on_image_change", env: "CVMD_ON_IMAGE_CHANGE", envbox: None, default: Some("rebase"), help: "when the writable layer was made on another image: keep (all of it), reset (start it fresh) or rebase (keep only CVMD_PERSIST_PATHS)" },
    Spec { key: "disk_size", env: "CVMD_DISK_SIZE", envbox: None, default: None, help: "bound the writable layer and the persistent paths together (bytes, or with KiB/MiB/GiB/TiB): one ext4 image file of that size on CVMD_PERSIST_DIR (else the state dir), loop-mounted [default: unbounded]" },
    Spec { key: "pull_secret", env: "CVMD_PULL_SECRET", envbox: Some("CODER_IMAGE_PULL_SECRET"), default: None, help: "registry credentials: path to, or inline, .dockerconfigjson / .dockercfg" },
    Spec { key: "docker_config", env: "CVMD_DOCKER_CONFIG", envbox: None, default: None, help: "docker config.json with auths/credHelpers/credsStore [default: $DOCKER_CONFIG/config.json, ~/.docker/config.json]" },
    Spec { key: "extra_certs", env: "CVMD_EXTRA_CERTS", envbox: Some("CODER_EXTRA_CERTS_PATH"), default: None, help: "CA certificates (PEM files or folders, comma-separated) trusted beside the system roots" },
    Spec { key: "insecure_registries", env: "CVMD_INSECURE_REGISTRIES", envbox: None, default: None, help: "registries (host[:port], comma-separated) reached over plain HTTP" },
    Spec { key: "mirrors", env: "CVMD_MIRRORS", envbox: None, default: None, help: "registry mirrors tried in order before the origin: REGISTRY=MIRROR[,REGISTRY=MIRROR...]" },
    Spec { key: "platform", env: "CVMD_PLATFORM", envbox: None, default: None, help: "os/arch[/variant] to pick from multi-platform images [default: this machine's]" },
    Spec { key: "image_backend", env: "CVMD_IMAGE_BACKEND", envbox: None, default: Some("native"), help: "where images come from: native (cvmd's registry client and layer cache), containerd (the node's containerd, through its socket), or auto (containerd when its socket is present, it answers and its snapshots are visible here, else native)" },
    Spec { key: "containerd_socket", env: "CVMD_CONTAINERD_SOCKET", envbox: None, default: Some("/run/containerd/containerd.sock"), help: "containerd's gRPC socket, for the containerd image backend" },
    Spec { key: "containerd_namespace", env: "CVMD_CONTAINERD_NAMESPACE", envbox: None, default: Some("cvmd"), help: "containerd namespace that holds cvmd's images, snapshots and leases" },
    Spec { key: "containerd_pull", env: "CVMD_CONTAINERD_PULL", envbox: None, default: Some("auto"), help: "how the containerd backend pulls: transfer (containerd 1.7+ fetches and unpacks, asking cvmd for credentials), content (cvmd fetches into containerd's content store), or auto (transfer where containerd has it and the pull needs no CVMD_EXTRA_CERTS, CVMD_MIRRORS or bare registry token)" },
    Spec { key: "containerd_hosts_dir", env: "CVMD_CONTAINERD_HOSTS_DIR", envbox: None, default: None, help: "folder of hosts.toml files on the node (e.g. /etc/containerd/certs.d) that containerd's transfer service applies: the node's mirrors, CAs and plain-HTTP registries" },
    Spec { key: "pull_policy", env: "CVMD_PULL_POLICY", envbox: None, default: Some("IfNotPresent"), help: "when to ask the registry before starting: Always, IfNotPresent (start from the node cache when it has the image), Never" },
    Spec { key: "pull_concurrency", env: "CVMD_PULL_CONCURRENCY", envbox: None, default: Some("4"), help: "layers downloaded at once (1-64)" },
    Spec { key: "pull_retries", env: "CVMD_PULL_RETRIES", envbox: None, default: Some("5"), help: "attempts per request before a transient error is final (1-100)" },
    Spec { key: "max_layer_size", env: "CVMD_MAX_LAYER_SIZE", envbox: None, default: Some("64GiB"), help: "refuse a layer whose unpacked files exceed this (bytes, or with KiB/MiB/GiB/TiB); 0: no bound" },
    Spec { key: "max_image_size", env: "CVMD_MAX_IMAGE_SIZE", envbox: None, default: Some("40GiB"), help: "refuse an image whose layers unpacked by one pull exceed this together (declared sizes, sparse holes included; bytes, or with KiB/MiB/GiB/TiB); 0: no bound" },
    Spec { key: "cache_reserve", env: "CVMD_CACHE_RESERVE", envbox: None, default: Some("10%"), help: "free space kept on the cache's file system: an unpack that would go below it stops (a percentage of the file system, or a size; 0: none)" },
    Spec { key: "cache_budget", env: "CVMD_CACHE_BUDGET", envbox: None, default: None, help: "after a pull, drop least recently used images until the cache is under this size (e.g. 100GiB)" },
    Spec { key: "workspace", env: "CVMD_WORKSPACE", envbox: None, default: Some("workspace"), help: "this workspace's name: its state dir, container id, lease and ID range" },
    Spec { key: "pod_namespace", env: "CVMD_POD_NAMESPACE", envbox: None, default: None, help: "the workspace pod's Kubernetes namespace (downward API metadata.namespace): with the workspace name it identifies the workspace on the node, so equal pod names in two namespaces get their own lease and ID range" },
    Spec { key: "runtime", env: "CVMD_RUNTIME", envbox: None, default: Some("sysbox-runc"), help: "OCI runtime binary (name on PATH or path): sysbox-runc, or runc where Sysbox is absent" },
    Spec { key: "runtime_root", env: "CVMD_RUNTIME_ROOT", envbox: None, default: None, help: "the runtime's --root [default: STATE_DIR/runtime]" },
    Spec { key: "rootfs_mode", env: "CVMD_ROOTFS_MODE", envbox: None, default: Some("auto"), help: "overlay, flat, or auto (overlay, else a flat copy)" },
    Spec { key: "idmap", env: "CVMD_IDMAP", envbox: None, default: Some("auto"), help: "the workspace's user namespace: auto (its own host ID range on the node), HOST_UID[:HOST_GID[:SIZE]], none (sysbox-runc allocates; refused under runc), or host-unsafe (runc only: no user namespace, the workspace's root is the node's root)" },
    Spec { key: "command", env: "CVMD_COMMAND", envbox: None, default: None, help: "run this instead of the image's init or entrypoint: a JSON array or space-separated words" },
    Spec { key: "user", env: "CVMD_USER", envbox: None, default: None, help: "user[:group] to run the command as (not for /sbin/init)" },
    Spec { key: "workdir", env: "CVMD_WORKDIR", envbox: None, default: None, help: "working directory of the command" },
    Spec { key: "hostname", env: "CVMD_HOSTNAME", envbox: Some("CODER_INNER_HOSTNAME"), default: None, help: "the workspace's hostname [default: the workspace name]" },
    Spec { key: "mounts", env: "CVMD_MOUNTS", envbox: Some("CODER_MOUNTS"), default: None, help: "outer paths mounted into the workspace: SRC:DST[:ro],..." },
    Spec { key: "envs", env: "CVMD_ENVS", envbox: Some("CODER_INNER_ENVS"), default: None, help: "outer environment variables passed in, by name or PREFIX* (comma-separated)" },
    Spec { key: "cpus", env: "CVMD_CPUS", envbox: Some("CODER_CPUS"), default: None, help: "CPU limit (e.g. 2 or 1.5) [default: the outer container's]" },
    Spec { key: "memory", env: "CVMD_MEMORY", envbox: Some("CODER_MEMORY"), default: None, help: "memory limit (bytes or 4GiB) [default: the outer container's]" },
    Spec { key: "add_tun", env: "CVMD_ADD_TUN", envbox: Some("CODER_ADD_TUN"), default: Some("false"), help: "give the workspace /dev/net/tun" },
    Spec { key: "add_fuse", env: "CVMD_ADD_FUSE", envbox: Some("CODER_ADD_FUSE"), default: Some("false"), help: "give the workspace /dev/fuse" },
    Spec { key: "shiftfs_src", env: "CVMD_SHIFTFS_SRC", envbox: None, default: Some("/opt/cvmd/shiftfs-src"), help: "shiftfs module source that `cvmd shiftfs install` builds (shipped in the outer image, outside the /usr/src the pod mounts from the node)" },
    Spec { key: "shiftfs_install", env: "CVMD_SHIFTFS_INSTALL", envbox: None, default: Some("false"), help: "at start, build and load shiftfs when the node needs it and allows it" },
    Spec { key: "network", env: "CVMD_NETWORK", envbox: None, default: Some("veth"), help: "the workspace's network: veth (a veth pair to the outer container, NAT to what it reaches) or none (loopback only)" },
    Spec { key: "subnet", env: "CVMD_SUBNET", envbox: None, default: Some("172.19.0.0/30"), help: "IPv4 subnet of the veth pair (at least 2 usable hosts): the outer end takes the first, the workspace the second" },
    Spec { key: "mtu", env: "CVMD_MTU", envbox: None, default: None, help: "MTU of the workspace's eth0 [default: the outer container's default-route interface's]" },
    Spec { key: "ports", env: "CVMD_PORTS", envbox: None, default: None, help: "ports of the outer container forwarded to the workspace: OUTER:INNER[/tcp|/udp],... (e.g. 8080:80,5353:53/udp)" },
    Spec { key: "allow_link_local", env: "CVMD_ALLOW_LINK_LOCAL", envbox: None, default: Some("false"), help: "let the workspace reach link-local addresses (169.254.0.0/16) through the outer container: the node's cloud metadata service and the credentials it hands out (the resolv.conf's link-local nameservers stay reachable on port 53 either way)" },
    Spec { key: "add_gpu", env: "CVMD_ADD_GPU", envbox: Some("CODER_ADD_GPU"), default: Some("false"), help: "give the workspace the outer container's /dev/nvidia* devices, NVIDIA driver libraries and NVIDIA_* variables" },
    Spec { key: "usr_lib_dir", env: "CVMD_USR_LIB_DIR", envbox: Some("CODER_USR_LIB_DIR"), default: None, help: "outer dir holding the NVIDIA driver libraries [default: /usr/lib/<multiarch triplet>]" },
    Spec { key: "gpu_dev_dir", env: "CVMD_GPU_DEV_DIR", envbox: None, default: Some("/dev"), help: "where to find the outer nvidia* device nodes (a test seam; they appear under /dev inside)" },
    Spec { key: "bootstrap_script", env: "CVMD_BOOTSTRAP_SCRIPT", envbox: Some("CODER_BOOTSTRAP_SCRIPT"), default: None, help: "shell script (the text) run inside the workspace as its user after start; a failure is only a warning" },
    Spec { key: "runtime_timeout", env: "CVMD_RUNTIME_TIMEOUT", envbox: None, default: Some("120"), help: "seconds each runtime create/start/kill/delete/state call may take before cvmd gives up on it" },
    Spec { key: "sysbox_mgr", env: "CVMD_SYSBOX_MGR", envbox: None, default: Some("sysbox-mgr"), help: "sysbox-mgr binary (name on PATH or path), started when the runtime is sysbox-runc" },
    Spec { key: "sysbox_fs", env: "CVMD_SYSBOX_FS", envbox: None, default: Some("sysbox-fs"), help: "sysbox-fs binary (name on PATH or path), started after sysbox-mgr" },
    Spec { key: "sysbox_run_dir", env: "CVMD_SYSBOX_RUN_DIR", envbox: None, default: Some("/run/sysbox"), help: "where sysbox-mgr and sysbox-fs put their sockets (sysmgr.sock, sysfs.sock)" },
    Spec { key: "sysbox_timeout", env: "CVMD_SYSBOX_TIMEOUT", envbox: None, default: Some("30"), help: "seconds to wait for each sysbox daemon's socket" },
    Spec { key: "termination_log", env: "CVMD_TERMINATION_LOG", envbox: None, default: Some("/dev/termination-log"), help: "a fatal error's message is written here when the file exists (Kubernetes shows it)" },
    Spec { key: "stop_timeout", env: "CVMD_STOP_TIMEOUT", envbox: None, default: Some("25"), help: "seconds the workspace has to stop before SIGKILL (keep under the pod's terminationGracePeriodSeconds)" },
    Spec { key: "max_reboots", env: "CVMD_MAX_REBOOTS", envbox: None, default: Some("5"), help: "reboots from inside the workspace booted again in place within CVMD_REBOOT_WINDOW; one more ends cvmd with an error (0: a reboot ends cvmd with 129)" },
    Spec { key: "reboot_window", env: "CVMD_REBOOT_WINDOW", envbox: None, default: Some("300"), help: "seconds over which CVMD_MAX_REBOOTS counts reboots" },
    Spec { key: "socket", env: "CVMD_SOCKET", envbox: None, default: None, help: "unix socket of the control API (cvmctl); never mounted into the workspace [default: STATE_DIR/cvmd.sock, so /run/cvmd/cvmd.sock]" },
    Spec { key: "admin_group", env: "CVMD_ADMIN_GROUP", envbox: None, default: None, help: "group (name or gid) whose members may use the control API besides root; makes the socket 0660 [default: root only, 0600]" },
    Spec { key: "metrics_addr", env: "CVMD_METRICS_ADDR", envbox: None, default: None, help: "ADDRESS:PORT to serve Prometheus metrics on over HTTP at /metrics (e.g. 0.0.0.0:9464) [default: only `cvmctl metrics`]" },
    Spec { key: "log_level", env: "CVMD_LOG_LEVEL", envbox: None, default: Some("info"), help: "error, warn, info, debug, trace, or a tracing filter" },
    Spec { key: "log_format", env: "CVMD_LOG_FORMAT", envbox: None, default: Some("auto"), help: "text, json, or auto (text on a terminal, json otherwise)" },
];

/// Clap arguments for every setting, global to all subcommands.
pub fn args() -> Vec<Arg> {
    SETTINGS
        .iter()
        .map(|s| {
            let mut help = format!("{} [env: {}", s.help, s.env);
            if let Some(alias) = s.envbox {
                help.push_str(&format!(", {alias}"));
            }
            help.push(']');
            if let Some(d) = s.default {
                help.push_str(&format!(" [default: {d}]"));
            }
            Arg::new(s.key)
                .long(s.key.replace('_', "-"))
                .value_name(s.key.to_uppercase())
                .global(true)
                .help(help)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub image: Option<String>,
    pub cache_dir: PathBuf,
    pub state_dir: PathBuf,
    pub pull_secret: Option<String>,
    pub docker_config: PathBuf,
    pub extra_certs: Vec<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub mirrors: HashMap<String, Vec<String>>,
    pub platform: Platform,
    pub image_backend: crate::backend::Choice,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub containerd_pull: crate::backend::containerd::PullPath,
    pub containerd_hosts_dir: Option<PathBuf>,
    pub pull_policy: crate::image::PullPolicy,
    pub pull_concurrency: usize,
    pub pull_retries: u32,
    pub max_layer_size: u64,
    pub max_image_size: u64,
    pub cache_reserve: crate::unpack::Reserve,
    pub cache_budget: Option<u64>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub workspace: String,
    pub pod_namespace: Option<String>,
    pub runtime: String,
    pub runtime_root: Option<PathBuf>,
    pub rootfs_mode: crate::rootfs::ModePreference,
    pub idmap: IdMapSetting,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Option<String>,
    pub envs: Vec<String>,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub add_tun: bool,
    pub add_fuse: bool,
    pub shiftfs_src: PathBuf,
    pub shiftfs_install: bool,
    pub stop_timeout: std::time::Duration,
    pub reboots: crate::supervisor::reboot::RebootPolicy,
    pub socket: PathBuf,
    pub admin_group: Option<String>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub network: crate::network::NetworkSettings,
    pub add_gpu: bool,
    pub usr_lib_dir: Option<PathBuf>,
    pub gpu_dev_dir: PathBuf,
    pub bootstrap_script: Option<String>,
    pub runtime_timeout: std::time::Duration,
    pub sysbox_mgr: String,
    pub sysbox_fs: String,
    pub sysbox_run_dir: PathBuf,
    pub sysbox_timeout: std::time::Duration,
    pub termination_log: PathBuf,
    pub disk: crate::disk::DiskSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMapSetting {
    /// `none`: no mapping in the bundle; sysbox-runc then allocates its
    /// own (the sysbox-runc contract). Refused under runc, where it would
    /// mean the node's root.
    None,
    Auto,
    Explicit(crate::rootfs::IdMap),
    /// `host-unsafe`: runc with no user namespace at all; a workspace
    /// root that escapes is the node's root. Only by this name.
    HostUnsafe,
}

/// The spelling of [`IdMapSetting::HostUnsafe`].
pub const HOST_UNSAFE: &str = "host-unsafe";

impl IdMapSetting {
    /// Whether the workspace runs in the node's user namespace.
    pub fn host_userns(self) -> bool {
        self == IdMapSetting::HostUnsafe
    }
}

/// Whether `setting` can run under `flavor`: `none` needs sysbox-runc to
/// allocate a mapping, and sysbox-runc always makes a user namespace.
pub fn idmap_fits(
    setting: IdMapSetting,
    flavor: crate::bundle::RuntimeFlavor,
) -> Result<(), String> {
    use crate::bundle::RuntimeFlavor;
    match (setting, flavor) {
        (IdMapSetting::None, RuntimeFlavor::Runc) => Err(format!(
            "none leaves the ID mapping to sysbox-runc, and under runc the workspace's root would be the node's root: leave it unset (auto: a user namespace with the workspace's own ID range), or set {HOST_UNSAFE} to accept that"
        )),
        (IdMapSetting::HostUnsafe, RuntimeFlavor::Sysbox) => Err(format!(
            "{HOST_UNSAFE} applies to runc only: sysbox-runc always runs the workspace in a user namespace; use auto or none"
        )),
        _ => Ok(()),
    }
}

/// Every bad value, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

#[derive(Debug, Clone)]
enum Origin {
    Flag,
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl Origin {
    fn describe(&self, spec: &Spec) -> String {
        match self {
            Origin::Flag => format!("--{}", spec.key.replace('_', "-")),
            Origin::Env(name) => (*name).to_string(),
            Origin::File(p) => format!("{} in {}", spec.key, p.display()),
            Origin::Default => format!("the default of {}", spec.key),
        }
    }
}

impl Settings {
    /// Resolves settings from parsed flags, an environment (a function so
    /// tests need not touch the process's), and the TOML file if one is named.
    pub fn resolve(
        matches: &ArgMatches,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let flag = |key: &str| matches.try_get_one::<String>(key).ok().flatten().cloned();
        let from_env = |spec: &Spec| {
            let get = |name: &'static str| {
                env(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, Origin::Env(name)))
            };
            get(spec.env).or_else(|| spec.envbox.and_then(get))
        };
        let config_spec = spec("config");
        let file_path = flag("config").or_else(|| from_env(config_spec).map(|(v, _)| v));
        let file = match &file_path {
            Some(p) => match load_file(p) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(e);
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        let raw = |key: &str| -> Option<(String, Origin)> {
            let s = spec(key);
            flag(key)
                .map(|v| (v, Origin::Flag))
                .or_else(|| from_env(s))
                .or_else(|| {
                    file.get(key).map(|v| {
                        (
                            v.clone(),
                            Origin::File(PathBuf::from(file_path.clone().unwrap_or_default())),
                        )
                    })
                })
                .or_else(|| s.default.map(|d| (d.to_string(), Origin::Default)))
        };
        let mut parse = |key: &str, check: &dyn Fn(&str) -> Result<(), String>| -> Option<String> {
            let (value, origin) = raw(key)?;
            match check(&value) {
                Ok(()) => Some(value),
                Err(why) => {
                    problems.push(format!("invalid {}: {why}", origin.describe(spec(key))));
                    None
                }
            }
        };
        let any = |_: &str| Ok(());
        let image = parse("image", &|v| {
            v.parse::<crate::registry::Reference>()
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let cache_dir = parse("cache_dir", &absolute).unwrap_or_default();
        let state_dir = parse("state_dir", &absolute).unwrap_or_default();
        let disk = crate::disk::DiskSettings {
            persist_dir: parse("persist_dir", &absolute).map(PathBuf::from),
            persist: parse("persist", &|v| {
                v.parse::<crate::disk::Persist>().map(|_| ())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::disk::Persist::Paths),
            paths: parse("persist_paths", &|v| {
                crate::disk::parse_paths(v).map(|_| ())
            })
            .and_then(|v| crate::disk::parse_paths(&v).ok())
            .unwrap_or_default(),
            on_image_change: parse("on_image_change", &|v| {
                v.parse::<crate::disk::OnImageChange>().map(|_| ())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::disk::OnImageChange::Rebase),
            size: parse("disk_size", &|v| match parse_size(v) {
                Ok(n) if n >= 16 << 20 => Ok(()),
                Ok(_) => Err(format!(
                    "{v:?} is under 16MiB, too small for ext4's own metadata"
                )),
                Err(e) => Err(e),
            })
            .and_then(|v| parse_size(&v).ok()),
        };
        let pull_secret = parse("pull_secret", &any);
        let docker_config = parse("docker_config", &any)
            .map(PathBuf::from)
            .unwrap_or_else(|| default_docker_config(env));
        let extra_certs = parse("extra_certs", &|v| {
            for p in list(v) {
                if !std::path::Path::new(&p).exists() {
                    return Err(format!("{p} does not exist"));
                }
            }
            Ok(())
        })
        .map(|v| list(&v).into_iter().map(PathBuf::from).collect())
        .unwrap_or_default();
        let insecure_registries = parse("insecure_registries", &any)
            .map(|v| list(&v))
            .unwrap_or_default();
        let mirrors = parse("mirrors", &|v| parse_mirrors(v).map(|_| ()))
            .map(|v| parse_mirrors(&v).unwrap_or_default())
            .unwrap_or_default();
        let platform = parse("platform", &|v| v.parse::<Platform>().map(|_| ()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(Platform::host);
        let image_backend = parse("image_backend", &|v| {
            v.parse::<crate::backend::Choice>().map(|_| ())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::backend::Choice::Native);
        let containerd_socket = parse("containerd_socket", &absolute)
            .map(PathBuf::from)
            .unwrap_or_default();
        let containerd_namespace = parse("containerd_namespace", &|v| {
            crate::backend::containerd::check_namespace(v)
        })
        .unwrap_or_else(|| "cvmd".into());
        let containerd_pull = parse("containerd_pull", &|v| {
            v.parse::<crate::backend::containerd::PullPath>()
                .map(|_| ())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::backend::containerd::PullPath::Auto);
        let containerd_hosts_dir = parse("containerd_hosts_dir", &absolute).map(PathBuf::from);
        let pull_policy = parse("pull_policy", &|v| {
            v.parse::<crate::image::PullPolicy>().map(|_| ())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::image::PullPolicy::IfNotPresent);
        let pull_concurrency = parse("pull_concurrency", &|v| in_range(v, 1, 64))
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let pull_retries = parse("pull_retries", &|v| in_range(v, 1, 100))
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let max_layer_size = parse("max_layer_size", &|v| parse_size(v).map(|_| ()))
            .and_then(|v| parse_size(&v).ok())
            .unwrap_or(64 << 30);
        // Under half of a 100 GB node disk: room for a second image, the
        // workspaces' upper dirs, sysbox and the kubelet beside the largest
        // image; real workspace images are a few GiB to ~30 GiB unpacked.
        let max_image_size = parse("max_image_size", &|v| parse_size(v).map(|_| ()))
            .and_then(|v| parse_size(&v).ok())
            .unwrap_or(40 << 30);
        // 10%: the kubelet's default hard eviction threshold for the node's
        // file system (nodefs.available<10%): a pull never takes the node
        // into evicting pods. A node that also wants to stay out of the
        // kubelet's image gc (from 85% used) sets 15%. Higher defaults made
        // cvmd refuse pulls on nodes with plenty of room in absolute terms
        // (a 250 GB disk with 30 GB free).
        let cache_reserve = parse("cache_reserve", &|v| {
            crate::unpack::Reserve::parse(v).map(|_| ())
        })
        .and_then(|v| crate::unpack::Reserve::parse(&v).ok())
        .unwrap_or(crate::unpack::Reserve::Percent(10));
        let cache_budget =
            parse("cache_budget", &|v| parse_size(v).map(|_| ())).and_then(|v| parse_size(&v).ok());
        let log_level = parse("log_level", &|v| {
            tracing_subscriber::EnvFilter::try_new(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| "info".into());
        let log_format = match parse("log_format", &|v| match v {
            "auto" | "text" | "json" => Ok(()),
            _ => Err(format!("{v:?} is not one of text, json, auto")),
        })
        .as_deref()
        {
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            _ => LogFormat::Auto,
        };
        let workspace = parse("workspace", &|v| {
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !v.starts_with('.');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'"
                ))
            }
        })
        .unwrap_or_else(|| "workspace".into());
        // Kubernetes namespaces are DNS labels.
        let pod_namespace = parse("pod_namespace", &|v| {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !v.starts_with('-')
                && !v.ends_with('-');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not a Kubernetes namespace name (1-63 of [a-z0-9-], not starting or ending with '-')"
                ))
            }
        });
        let runtime = parse("runtime", &any).unwrap_or_else(|| "sysbox-runc".into());
        let runtime_root = parse("runtime_root", &absolute).map(PathBuf::from);
        let rootfs_mode = match parse("rootfs_mode", &|v| match v {
            "auto" | "overlay" | "flat" => Ok(()),
            _ => Err(format!("{v:?} is not one of auto, overlay, flat")),
        })
        .as_deref()
        {
            Some("overlay") => crate::rootfs::ModePreference::Overlay,
            Some("flat") => crate::rootfs::ModePreference::Flat,
            _ => crate::rootfs::ModePreference::Auto,
        };
        let flavor = crate::bundle::RuntimeFlavor::of_runtime(&runtime);
        let idmap = parse("idmap", &|v| {
            parse_idmap_setting(v).and_then(|setting| idmap_fits(setting, flavor))
        })
        .and_then(|v| parse_idmap_setting(&v).ok())
        .unwrap_or(IdMapSetting::Auto);
        let command = parse("command", &|v| parse_command(v).map(|_| ()))
            .and_then(|v| parse_command(&v).ok());
        let user = parse("user", &any);
        let workdir = parse("workdir", &|v| {
            if v.starts_with('/') {
                Ok(())
            } else {
                Err(format!("{v:?} is not an absolute path"))
            }
        });
        let hostname = parse("hostname", &|v| {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !v.starts_with('-');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not a valid hostname (1-63 of [A-Za-z0-9-])"
                ))
            }
        });
        let mounts = parse("mounts", &any);
        let envs = parse("envs", &any).map(|v| list(&v)).unwrap_or_default();
        let cpus = parse("cpus", &|v| {
            crate::bundle::parse_cpus(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .and_then(|v| crate::bundle::parse_cpus(&v).ok());
        let memory =
            parse("memory", &|v| parse_size(v).map(|_| ())).and_then(|v| parse_size(&v).ok());
        let add_tun = parse("add_tun", &|v| parse_bool(v).map(|_| ()))
            .and_then(|v| parse_bool(&v).ok())
            .unwrap_or(false);
        let add_fuse = parse("add_fuse", &|v| parse_bool(v).map(|_| ()))
            .and_then(|v| parse_bool(&v).ok())
            .unwrap_or(false);
        let shiftfs_src = parse("shiftfs_src", &absolute)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/cvmd/shiftfs-src"));
        let shiftfs_install = parse("shiftfs_install", &|v| parse_bool(v).map(|_| ()))
            .and_then(|v| parse_bool(&v).ok())
            .unwrap_or(false);
        let stop_timeout = parse("stop_timeout", &|v| in_range(v, 1, 3600))
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or(std::time::Duration::from_secs(25));
        let reboots = crate::supervisor::reboot::RebootPolicy {
            max: parse("max_reboots", &|v| in_range(v, 0, 1000))
                .and_then(|v| v.parse().ok())
                .unwrap_or(5),
            window: parse("reboot_window", &|v| in_range(v, 1, 86400))
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_secs)
                .unwrap_or(std::time::Duration::from_secs(300)),
        };
        // Beside the state: one socket per state dir, as runtime_root.
        let socket = parse("socket", &absolute)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(&state_dir).join("cvmd.sock"));
        let admin_group = parse("admin_group", &|v| {
            crate::api::peer::resolve_group(v).map(|_| ())
        });
        let metrics_addr = parse("metrics_addr", &|v| {
            v.parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|_| format!("{v:?} is not an ADDRESS:PORT such as 0.0.0.0:9464"))
        })
        .and_then(|v| v.parse().ok());
        let network = crate::network::NetworkSettings {
            mode: parse("network", &|v| {
                v.parse::<crate::network::Mode>().map(|_| ())
            })
            .and_then(|v| v.parse().ok()),
            subnet: parse("subnet", &|v| {
                v.parse::<crate::network::Subnet>().map(|_| ())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
            mtu: parse("mtu", &|v| crate::network::plan::parse_mtu(v).map(|_| ()))
                .and_then(|v| crate::network::plan::parse_mtu(&v).ok()),
            ports: parse("ports", &|v| {
                crate::network::plan::parse_ports(v).map(|_| ())
            })
            .and_then(|v| crate::network::plan::parse_ports(&v).ok())
            .unwrap_or_default(),
            allow_link_local: parse("allow_link_local", &|v| parse_bool(v).map(|_| ()))
                .and_then(|v| parse_bool(&v).ok())
                .unwrap_or(false),
        };
        let add_gpu = parse("add_gpu", &|v| parse_bool(v).map(|_| ()))
            .and_then(|v| parse_bool(&v).ok())
            .unwrap_or(false);
        let usr_lib_dir = parse("usr_lib_dir", &absolute).map(PathBuf::from);
        let gpu_dev_dir = parse("gpu_dev_dir", &absolute).unwrap_or_else(|| "/dev".into());
        let bootstrap_script = parse("bootstrap_script", &any).filter(|s| !s.trim().is_empty());
        let runtime_timeout = parse("runtime_timeout", &|v| in_range(v, 1, 3600))
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or(std::time::Duration::from_secs(120));
        let sysbox_mgr = parse("sysbox_mgr", &any).unwrap_or_else(|| "sysbox-mgr".into());
        let sysbox_fs = parse("sysbox_fs", &any).unwrap_or_else(|| "sysbox-fs".into());
        let sysbox_run_dir =
            parse("sysbox_run_dir", &absolute).unwrap_or_else(|| "/run/sysbox".into());
        let sysbox_timeout = parse("sysbox_timeout", &|v| in_range(v, 1, 3600))
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or(std::time::Duration::from_secs(30));
        let termination_log =
            parse("termination_log", &absolute).unwrap_or_else(|| "/dev/termination-log".into());
        if network.mode() == crate::network::Mode::None && !network.ports.is_empty() {
            problems.push(
                "ports are forwarded to the workspace's veth: they need network veth, not none"
                    .into(),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Settings {
            image,
            cache_dir: cache_dir.into(),
            state_dir: state_dir.into(),
            pull_secret,
            docker_config,
            extra_certs,
            insecure_registries,
            mirrors,
            platform,
            image_backend,
            containerd_socket,
            containerd_namespace,
            containerd_pull,
            containerd_hosts_dir,
            pull_policy,
            pull_concurrency,
            pull_retries,
            max_layer_size,
            max_image_size,
            cache_reserve,
            cache_budget,
            log_level,
            log_format,
            workspace,
            pod_namespace,
            runtime,
            runtime_root,
            rootfs_mode,
            idmap,
            command,
            user,
            workdir,
            hostname,
            mounts,
            envs,
            cpus,
            memory,
            add_tun,
            add_fuse,
            shiftfs_src,
            shiftfs_install,
            stop_timeout,
            reboots,
            socket,
            admin_group,
            metrics_addr,
            network,
            add_gpu,
            usr_lib_dir,
            gpu_dev_dir: gpu_dev_dir.into(),
            bootstrap_script,
            runtime_timeout,
            sysbox_mgr,
            sysbox_fs,
            sysbox_run_dir: sysbox_run_dir.into(),
            sysbox_timeout,
            termination_log: termination_log.into(),
            disk,
        })
    }

    /// The workspace's identity on the node, which every pod on it shares
    /// a cache with: `NAMESPACE/NAME` when the pod's namespace is known
    /// (pod names are unique only within one), else the name. Its lease
    /// and its host ID range are keyed by this; its container id and state
    /// dir stay the plain name (they are the pod's own).
    pub fn node_identity(&self) -> String {
        match &self.pod_namespace {
            Some(ns) => format!("{ns}/{}", self.workspace),
            None => self.workspace.clone(),
        }
    }

    /// Registry client options, with the credential sources in the order
    /// they are consulted: the pull secret first, then the docker config.
    pub fn client_options(
        &self,
    ) -> Result<ClientOptions, crate::registry::credentials::CredentialError> {
        let mut sources = Vec::new();
        if let Some(secret) = &self.pull_secret {
            sources.push(CredentialSource::from_pull_secret(secret)?);
        }
        sources.push(CredentialSource::from_docker_config(&self.docker_config)?);
        Ok(ClientOptions {
            insecure_registries: self.insecure_registries.clone(),
            extra_ca_paths: self.extra_certs.clone(),
            mirrors: self.mirrors.clone(),
            keychain: Keychain {
                sources,
                helper_path: None,
            },
            retry: RetryPolicy {
                attempts: self.pull_retries,
                ..RetryPolicy::default()
            },
        })
    }
}

fn spec(key: &str) -> &'static Spec {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("setting {key} is not in SETTINGS"))
}

fn default_docker_config(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".docker").join("config.json")
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn absolute(v: &str) -> Result<(), String> {
    if v.starts_with('/') {
        Ok(())
    } else {
        Err(format!("{v:?} is not an absolute path"))
    }
}

fn in_range(v: &str, lo: u64, hi: u64) -> Result<(), String> {
    match v.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(format!("{v:?} is not a whole number from {lo} to {hi}")),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

/// A JSON array of strings, or words separated by spaces.
fn parse_command(v: &str) -> Result<Vec<String>, String> {
    let words: Vec<String> = if v.trim_start().starts_with('[') {
        serde_json::from_str(v).map_err(|_| format!("{v:?} is not a JSON array of strings"))?
    } else {
        v.split_whitespace().map(String::from).collect()
    };
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

pub fn parse_idmap_setting(v: &str) -> Result<IdMapSetting, String> {
    match v {
        "none" => Ok(IdMapSetting::None),
        "auto" => Ok(IdMapSetting::Auto),
        HOST_UNSAFE => Ok(IdMapSetting::HostUnsafe),
        explicit => explicit.parse().map(IdMapSetting::Explicit),
    }
}

pub use crate::unpack::parse_size;

fn parse_mirrors(v: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for entry in list(v) {
        let (registry, mirror) = entry
            .split_once('=')
            .filter(|(r, m)| !r.is_empty() && !m.is_empty())
            .ok_or_else(|| format!("{entry:?} is not REGISTRY=MIRROR"))?;
        out.entry(registry.trim().to_string())
            .or_default()
            .push(mirror.trim().to_string());
    }
    Ok(out)
}

/// The TOML file as key -> value string; lists are joined with ','.
fn load_file(path: &str) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {path}: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("config file {path}: {}", e.message()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if key == "config" || !SETTINGS.iter().any(|s| s.key == key) {
            let known: Vec<&str> = SETTINGS
                .iter()
                .map(|s| s.key)
                .filter(|k| *k != "config")
                .collect();
            return Err(format!(
                "config file {path}: unknown setting {key:?} (known: {})",
                known.join(", ")
            ));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s),
                    other => Err(format!(
                        "config file {path}: {key} must list strings, found {other}"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => {
                return Err(format!(
                    "config file {path}: {key} has an unsupported value {other}"
                ))
            }
        };
        out.insert(key, text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let cmd = clap::Command::new("cvmd").args(args());
        let matches = cmd
            .try_get_matches_from(std::iter::once("cvmd").chain(argv.iter().copied()))
            .unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(&matches, &|k| env.get(k).cloned())
    }

    #[test]
    fn the_default_id_mapping_is_the_workspaces_own_range_under_every_runtime() {
        for runtime in ["runc", "sysbox-runc", "/usr/bin/runc"] {
            let s = resolve(&["--runtime", runtime], &[]).unwrap();
            assert_eq!(s.idmap, IdMapSetting::Auto, "{runtime}");
            assert!(!s.idmap.host_userns());
        }
    }

    #[test]
    fn none_under_runc_is_refused_naming_the_unsafe_setting() {
        let e = resolve(&["--runtime", "runc"], &[("CVMD_IDMAP", "none")]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("invalid CVMD_IDMAP"), "{text}");
        assert!(
            text.contains("node's root") && text.contains(HOST_UNSAFE),
            "{text}"
        );
        // sysbox-runc allocates a mapping itself: its contract.
        let s = resolve(&["--runtime", "sysbox-runc", "--idmap", "none"], &[]).unwrap();
        assert_eq!(s.idmap, IdMapSetting::None);
    }

    #[test]
    fn the_host_user_namespace_only_by_its_unsafe_name_and_only_under_runc() {
        let s = resolve(&["--runtime", "runc", "--idmap", "host-unsafe"], &[]).unwrap();
        assert!(s.idmap.host_userns());
        let e = resolve(&["--runtime", "sysbox-runc", "--idmap", "host-unsafe"], &[]).unwrap_err();
        assert!(e.to_string().contains("runc only"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let s = resolve(&[], &[]).unwrap();
        assert_eq!(s.cache_dir, PathBuf::from("/var/lib/cvmd"));
        assert_eq!(s.pull_concurrency, 4);
        assert_eq!(s.docker_config, PathBuf::from("/root/.docker/config.json"));
        assert_eq!(s.platform, Platform::host());
        assert_eq!(s.socket, PathBuf::from("/run/cvmd/cvmd.sock"));
        assert_eq!(s.admin_group, None);
        assert_eq!(s.image_backend, crate::backend::Choice::Native);
        assert_eq!(
            s.containerd_socket,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(s.containerd_namespace, "cvmd");
    }

    #[test]
    fn the_socket_follows_the_state_dir_and_the_admin_group_must_exist() {
        let s = resolve(&[], &[("CVMD_STATE_DIR", "/tmp/x")]).unwrap();
        assert_eq!(s.socket, PathBuf::from("/tmp/x/cvmd.sock"));
        let e = resolve(&[], &[("CVMD_ADMIN_GROUP", "no-such-group-cvmd")]).unwrap_err();
        assert!(e.problems[0].contains("CVMD_ADMIN_GROUP"), "{e}");
        let s = resolve(&[], &[("CVMD_ADMIN_GROUP", "4242")]).unwrap();
        assert_eq!(s.admin_group.as_deref(), Some("4242"));
    }

    #[test]
    fn flag_beats_cvmd_env_beats_envbox_alias() {
        let env = [("CVMD_IMAGE", "a:1"), ("CODER_INNER_IMAGE", "b:1")];
        assert_eq!(resolve(&[], &env).unwrap().image.as_deref(), Some("a:1"));
        assert_eq!(
            resolve(&[], &env[1..]).unwrap().image.as_deref(),
            Some("b:1")
        );
        assert_eq!(
            resolve(&["--image", "c:1"], &env).unwrap().image.as_deref(),
            Some("c:1")
        );
    }

    #[test]
    fn file_values_are_below_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cvmd.toml");
        std::fs::write(
            &path,
            "image = \"f:1\"\ninsecure_registries = [\"a:5000\", \"b\"]\npull_concurrency = 8\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--config", p], &[]).unwrap();
        assert_eq!(s.image.as_deref(), Some("f:1"));
        assert_eq!(s.insecure_registries, ["a:5000", "b"]);
        assert_eq!(s.pull_concurrency, 8);
        let s = resolve(&[], &[("CVMD_CONFIG", p), ("CVMD_IMAGE", "e:1")]).unwrap();
        assert_eq!(s.image.as_deref(), Some("e:1"));
    }

    #[test]
    fn every_bad_value_is_reported_once_with_its_origin() {
        let e = resolve(
            &["--pull-concurrency", "0"],
            &[
                ("CVMD_CACHE_DIR", "relative"),
                ("CODER_INNER_IMAGE", "Bad Image"),
                ("CVMD_MIRRORS", "nomirror"),
                ("CVMD_LOG_FORMAT", "xml"),
            ],
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 5, "{text}");
        assert!(
            text.contains("invalid --pull-concurrency: \"0\" is not a whole number from 1 to 64"),
            "{text}"
        );
        assert!(
            text.contains("invalid CVMD_CACHE_DIR: \"relative\" is not an absolute path"),
            "{text}"
        );
        assert!(text.contains("invalid CODER_INNER_IMAGE"), "{text}");
        assert!(
            text.contains("\"nomirror\" is not REGISTRY=MIRROR"),
            "{text}"
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "imagee = \"x\"\n").unwrap();
        let e = resolve(&["--config", path.to_str().unwrap()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting \"imagee\""), "{e}");
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn mirrors_keep_their_order() {
        let s = resolve(
            &[],
            &[(
                "CVMD_MIRRORS",
                "docker.io=m1:5000, docker.io=https://m2,quay.io=m3",
            )],
        )
        .unwrap();
        assert_eq!(s.mirrors["docker.io"], ["m1:5000", "https://m2"]);
        assert_eq!(s.mirrors["quay.io"], ["m3"]);
    }

    #[test]
    fn network_settings_resolve_and_report_bad_values() {
        let s = resolve(&[], &[]).unwrap();
        assert_eq!(s.network.mode(), crate::network::Mode::Veth);
        assert_eq!(s.network.subnet.to_string(), "172.19.0.0/30");
        let s = resolve(
            &["--network", "veth", "--mtu", "1400"],
            &[("CVMD_SUBNET", "10.1.0.0/29"), ("CVMD_PORTS", "8080:80")],
        )
        .unwrap();
        assert_eq!(s.network.mode(), crate::network::Mode::Veth);
        assert_eq!(s.network.mtu, Some(1400));
        assert_eq!(s.network.subnet.inner().to_string(), "10.1.0.2");
        assert_eq!(s.network.ports.len(), 1);
        let e = resolve(
            &["--subnet", "10.1.0.0/31", "--ports", "80:0"],
            &[("CVMD_NETWORK", "host")],
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert!(
            e.to_string()
                .contains("invalid CVMD_NETWORK: \"host\" is not one of veth, none"),
            "{e}"
        );
        let e = resolve(&["--network", "none", "--ports", "80"], &[]).unwrap_err();
        assert!(e.to_string().contains("need network veth"), "{e}");
    }

    #[test]
    fn every_setting_has_a_flag_and_an_env_var() {
        let help = clap::Command::new("cvmd")
            .args(args())
            .render_long_help()
            .to_string();
        for s in SETTINGS {
            assert!(help.contains(s.env), "{}", s.env);
            assert!(
                help.contains(&format!("--{}", s.key.replace('_', "-"))),
                "{}",
                s.key
            );
            if let Some(a) = s.envbox {
                assert!(help.contains(a), "{a}");
            }
        }
    }
}

#[cfg(test)]
mod readme {
    /// The README's settings table is the reference users read: it must
    /// name every setting.
    #[test]
    fn readme_lists_every_setting() {
        let readme = include_str!("../README.md");
        for s in super::SETTINGS.iter().filter(|s| s.key != "config") {
            assert!(
                readme.contains(&format!("`{}`", s.env)),
                "README lacks {}",
                s.env
            );
        }
    }
}
