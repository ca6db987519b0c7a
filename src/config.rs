//! Settings: each is a flag, a `CVMD_*` environment variable, an envbox
//! `CODER_*` alias where envbox has the same setting, and a key of the
//! optional TOML file, in that order of precedence. One table below is the
//! single source of the flags, the help text and the validation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgMatches};

use crate::backend::{BackendOptions, RootfsOptions};
use crate::bundle::RuntimeFlavor;
use crate::idmap::IdMapSetting;
use crate::image::{PullOptions, RegistryAccess};
use crate::registry::manifest::Platform;
use crate::workspace::{
    ApiOptions, BundleOptions, GpuOptions, Identity, RunOptions, RuntimeOptions, SuperviseOptions,
};

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
    Spec { key: "state_dir", env: "CVMD_STATE_DIR", envbox: None, default: Some("/run/cvmd"), help: "this workspace's state (bundle, upper dir)" },
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

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{v:?} is not one of text, json, auto")),
        }
    }
}

/// Every setting, resolved: the log set-up, and what `cvmd run` reads,
/// grouped by stage. The other commands take the groups they need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A tracing filter (validated).
    pub log_level: String,
    pub log_format: LogFormat,
    pub run: RunOptions,
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

/// Reads each setting once, in order of precedence: the flag, the
/// environment (`CVMD_*`, then the envbox alias), the TOML file, then the
/// table's default; every bad value becomes one problem naming where it
/// came from.
struct Resolver<'a> {
    matches: &'a ArgMatches,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, String>,
    file_path: PathBuf,
    problems: Vec<String>,
}

impl<'a> Resolver<'a> {
    fn new(matches: &'a ArgMatches, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let mut r = Resolver {
            matches,
            env,
            file: BTreeMap::new(),
            file_path: PathBuf::new(),
            problems: Vec::new(),
        };
        if let Some((path, _)) = r.given(spec("config")) {
            match load_file(&path) {
                Ok(file) => r.file = file,
                Err(e) => r.problems.push(e),
            }
            r.file_path = PathBuf::from(path);
        }
        r
    }

    /// The flag's or the environment's value (an empty variable is unset).
    fn given(&self, spec: &Spec) -> Option<(String, Origin)> {
        if let Some(v) = self.matches.try_get_one::<String>(spec.key).ok().flatten() {
            return Some((v.clone(), Origin::Flag));
        }
        let env = |name: &'static str| {
            (self.env)(name)
                .filter(|v| !v.is_empty())
                .map(|v| (v, Origin::Env(name)))
        };
        env(spec.env).or_else(|| spec.envbox.and_then(env))
    }

    fn raw(&self, spec: &Spec) -> Option<(String, Origin)> {
        self.given(spec)
            .or_else(|| {
                let v = self.file.get(spec.key)?;
                Some((v.clone(), Origin::File(self.file_path.clone())))
            })
            .or_else(|| spec.default.map(|d| (d.to_string(), Origin::Default)))
    }

    /// The setting parsed; `None` when it is unset and has no default, or
    /// when it is bad (then a problem is noted).
    fn opt<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let spec = spec(key);
        let (value, origin) = self.raw(spec)?;
        match parse(&value) {
            Ok(v) => Some(v),
            Err(why) => {
                self.problems
                    .push(format!("invalid {}: {why}", origin.describe(spec)));
                None
            }
        }
    }

    /// A setting with a default in the table. When its value is bad, the
    /// problem is noted and the default stands in: resolving fails anyway,
    /// so it is never used.
    fn get<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        if let Some(v) = self.opt(key, &parse) {
            return v;
        }
        let default = spec(key)
            .default
            .unwrap_or_else(|| panic!("setting {key} has no default in SETTINGS"));
        parse(default).unwrap_or_else(|e| panic!("the default of {key} is bad: {e}"))
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
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
        let mut r = Resolver::new(matches, env);
        let log_level = r.get("log_level", |v| {
            tracing_subscriber::EnvFilter::try_new(v)
                .map(|_| v.to_string())
                .map_err(|e| e.to_string())
        });
        let log_format = r.get("log_format", str::parse);
        let run = run_options(&mut r, env);
        r.finish(Settings {
            log_level,
            log_format,
            run,
        })
    }
}

fn run_options(r: &mut Resolver, env: &dyn Fn(&str) -> Option<String>) -> RunOptions {
    let image = r.opt("image", |v| {
        v.parse::<crate::registry::Reference>()
            .map(|_| v.to_string())
            .map_err(|e| e.to_string())
    });
    let state_dir = r.get("state_dir", absolute);
    let identity = identity(r);
    let pull = pull_options(r, env);
    let backend = backend_options(r);
    let runtime = runtime_options(r);
    let flavor = RuntimeFlavor::of_runtime(&runtime.name);
    let rootfs = RootfsOptions {
        mode: r.get("rootfs_mode", str::parse),
        idmap: r.get("idmap", |v| {
            let setting: IdMapSetting = v.parse()?;
            setting.fits(flavor).map(|()| setting)
        }),
    };
    let bundle = bundle_options(r);
    let usr_lib_dir = r.opt("usr_lib_dir", absolute);
    let gpu_dev_dir = r.get("gpu_dev_dir", absolute);
    let add_gpu = r.get("add_gpu", parse_bool);
    let sysbox = sysbox_config(r);
    let preflight = crate::preflight::Options {
        runtime: runtime.name.clone(),
        cache_dir: pull.cache_dir.clone(),
        idmap: rootfs.idmap.maps(),
        host_userns: rootfs.idmap.host_userns(),
        add_fuse: bundle.fuse,
        add_tun: bundle.tun,
        // The dir `cvmd run` looks in (launch::gpu), so both agree.
        usr_lib_dir: Some(
            usr_lib_dir
                .clone()
                .unwrap_or_else(crate::launch::gpu::default_lib_dir),
        ),
        sysbox_mgr: sysbox.mgr.clone(),
        sysbox_fs: sysbox.fs.clone(),
        sysbox_run_dir: sysbox.run_dir.clone(),
    };
    let shiftfs = crate::shiftfs::Options {
        src: r.get("shiftfs_src", absolute),
        build_root: state_dir.join("shiftfs-build"),
        install_at_start: r.get("shiftfs_install", parse_bool),
    };
    let network = network_settings(r);
    let supervise = SuperviseOptions {
        stop_timeout: r.get("stop_timeout", seconds(1, 3600)),
        reboots: crate::supervisor::reboot::RebootPolicy {
            max: r.get("max_reboots", |v| whole(v, 0, 1000).map(|n| n as u32)),
            window: r.get("reboot_window", seconds(1, 86400)),
        },
        bootstrap_script: r
            .opt("bootstrap_script", |v| Ok(v.to_string()))
            .filter(|s| !s.trim().is_empty()),
        termination_log: r.get("termination_log", absolute),
    };
    let api = api_options(r, &state_dir);
    RunOptions {
        image,
        identity,
        state_dir,
        pull,
        backend,
        rootfs,
        preflight,
        shiftfs,
        bundle: BundleOptions {
            gpu: add_gpu.then_some(GpuOptions {
                lib_dir: usr_lib_dir,
                dev_dir: gpu_dev_dir,
            }),
            ..bundle
        },
        runtime,
        sysbox,
        network,
        supervise,
        api,
    }
}

fn identity(r: &mut Resolver) -> Identity {
    let name = r.get("workspace", |v| {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !v.starts_with('.');
        if ok {
            Ok(v.to_string())
        } else {
            Err(format!(
                "{v:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'"
            ))
        }
    });
    // Kubernetes namespaces are DNS labels.
    let pod_namespace = r.opt("pod_namespace", |v| {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-');
        if ok {
            Ok(v.to_string())
        } else {
            Err(format!(
                "{v:?} is not a Kubernetes namespace name (1-63 of [a-z0-9-], not starting or ending with '-')"
            ))
        }
    });
    Identity {
        name,
        pod_namespace,
    }
}

fn pull_options(r: &mut Resolver, env: &dyn Fn(&str) -> Option<String>) -> PullOptions {
    let registry = RegistryAccess {
        pull_secret: r.opt("pull_secret", |v| Ok(v.to_string())),
        docker_config: r
            .opt("docker_config", |v| Ok(PathBuf::from(v)))
            .unwrap_or_else(|| default_docker_config(env)),
        extra_certs: r
            .opt("extra_certs", |v| {
                let paths = list(v);
                if let Some(p) = paths.iter().find(|p| !std::path::Path::new(p).exists()) {
                    return Err(format!("{p} does not exist"));
                }
                Ok(paths.into_iter().map(PathBuf::from).collect())
            })
            .unwrap_or_default(),
        insecure_registries: r
            .opt("insecure_registries", |v| Ok(list(v)))
            .unwrap_or_default(),
        mirrors: r.opt("mirrors", parse_mirrors).unwrap_or_default(),
        retries: r.get("pull_retries", |v| whole(v, 1, 100).map(|n| n as u32)),
    };
    PullOptions {
        cache_dir: r.get("cache_dir", absolute),
        registry,
        platform: r
            .opt("platform", str::parse::<Platform>)
            .unwrap_or_else(Platform::host),
        policy: r.get("pull_policy", str::parse),
        concurrency: r.get("pull_concurrency", |v| whole(v, 1, 64).map(|n| n as usize)),
        max_layer_size: r.get("max_layer_size", parse_size),
        // Under half of a 100 GB node disk: room for a second image, the
        // workspaces' upper dirs, sysbox and the kubelet beside the largest
        // image; real workspace images are a few GiB to ~30 GiB unpacked.
        max_image_size: r.get("max_image_size", parse_size),
        // 10%: the kubelet's default hard eviction threshold for the node's
        // file system (nodefs.available<10%): a pull never takes the node
        // into evicting pods. A node that also wants to stay out of the
        // kubelet's image gc (from 85% used) sets 15%. Higher defaults made
        // cvmd refuse pulls on nodes with plenty of room in absolute terms
        // (a 250 GB disk with 30 GB free).
        cache_reserve: r.get("cache_reserve", crate::unpack::Reserve::parse),
        cache_budget: r.opt("cache_budget", parse_size),
    }
}

fn backend_options(r: &mut Resolver) -> BackendOptions {
    BackendOptions {
        choice: r.get("image_backend", str::parse),
        containerd: crate::backend::containerd::Options {
            socket: r.get("containerd_socket", absolute),
            namespace: r.get("containerd_namespace", |v| {
                crate::backend::containerd::check_namespace(v).map(|()| v.to_string())
            }),
            route: crate::backend::containerd::PullRoute {
                path: r.get("containerd_pull", str::parse),
                hosts_dir: r.opt("containerd_hosts_dir", absolute),
            },
        },
    }
}

fn runtime_options(r: &mut Resolver) -> RuntimeOptions {
    RuntimeOptions {
        name: r.get("runtime", |v| Ok(v.to_string())),
        root: r.opt("runtime_root", absolute),
        timeout: r.get("runtime_timeout", seconds(1, 3600)),
    }
}

/// Everything but the GPUs, which need settings preflight reads too.
fn bundle_options(r: &mut Resolver) -> BundleOptions {
    BundleOptions {
        hostname: r.opt("hostname", |v| {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !v.starts_with('-');
            if ok {
                Ok(v.to_string())
            } else {
                Err(format!(
                    "{v:?} is not a valid hostname (1-63 of [A-Za-z0-9-])"
                ))
            }
        }),
        command: r.opt("command", parse_command),
        user: r.opt("user", |v| Ok(v.to_string())),
        workdir: r.opt("workdir", |v| absolute(v).map(|_| v.to_string())),
        mounts: r.opt("mounts", |v| Ok(v.to_string())),
        envs: r.opt("envs", |v| Ok(list(v))).unwrap_or_default(),
        cpus: r.opt("cpus", |v| {
            crate::bundle::parse_cpus(v).map_err(|e| e.to_string())
        }),
        memory: r.opt("memory", parse_size),
        tun: r.get("add_tun", parse_bool),
        fuse: r.get("add_fuse", parse_bool),
        gpu: None,
    }
}

fn sysbox_config(r: &mut Resolver) -> crate::launch::sysbox::Config {
    crate::launch::sysbox::Config {
        mgr: r.get("sysbox_mgr", |v| Ok(v.to_string())),
        fs: r.get("sysbox_fs", |v| Ok(v.to_string())),
        run_dir: r.get("sysbox_run_dir", absolute),
        timeout: r.get("sysbox_timeout", seconds(1, 3600)),
    }
}

fn network_settings(r: &mut Resolver) -> crate::network::NetworkSettings {
    let network = crate::network::NetworkSettings {
        mode: Some(r.get("network", str::parse)),
        subnet: r.get("subnet", str::parse),
        mtu: r.opt("mtu", crate::network::plan::parse_mtu),
        ports: r
            .opt("ports", crate::network::plan::parse_ports)
            .unwrap_or_default(),
        allow_link_local: r.get("allow_link_local", parse_bool),
    };
    if network.mode() == crate::network::Mode::None && !network.ports.is_empty() {
        r.problems.push(
            "ports are forwarded to the workspace's veth: they need network veth, not none".into(),
        );
    }
    network
}

fn api_options(r: &mut Resolver, state_dir: &std::path::Path) -> ApiOptions {
    ApiOptions {
        // Beside the state: one socket per state dir, as runtime_root.
        socket: r
            .opt("socket", absolute)
            .unwrap_or_else(|| state_dir.join("cvmd.sock")),
        admin_group: r.opt("admin_group", |v| {
            crate::api::peer::resolve_group(v).map(|_| v.to_string())
        }),
        metrics_addr: r.opt("metrics_addr", |v| {
            v.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("{v:?} is not an ADDRESS:PORT such as 0.0.0.0:9464"))
        }),
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

fn absolute(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err(format!("{v:?} is not an absolute path"))
    }
}

fn whole(v: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is not a whole number from {lo} to {hi}")),
    }
}

/// Whole seconds from `lo` to `hi`.
fn seconds(lo: u64, hi: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| whole(v, lo, hi).map(Duration::from_secs)
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

/// `123`, `10MiB`, `64GiB` (binary units; `K`/`M`/`G`/`T` too).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(format!("{v:?} is not a size like 1048576, 512MiB or 64GiB")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{v:?} is not a size like 1048576, 512MiB or 64GiB"))
}

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
/// Where cvmd's control socket is, from the settings cvmd itself reads
/// for it, with the same precedence: `flag` (cvmctl's --socket), then
/// CVMD_SOCKET, then the config file's `socket` (CVMD_CONFIG), else
/// `cvmd.sock` in the state dir (CVMD_STATE_DIR, the file's `state_dir`,
/// the default). Only these keys are read, so cvmctl works beside a
/// config file whose other settings it need not understand.
pub fn control_socket(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let file = match env("CVMD_CONFIG") {
        Some(path) => load_file(&path)?,
        None => BTreeMap::new(),
    };
    let pick = |key: &str| {
        let spec = spec(key);
        env(spec.env).or_else(|| file.get(key).cloned())
    };
    if let Some(socket) = flag.map(str::to_string).or_else(|| pick("socket")) {
        return Ok(PathBuf::from(socket));
    }
    let state_dir = pick("state_dir")
        .or_else(|| spec("state_dir").default.map(str::to_string))
        .unwrap_or_default();
    Ok(PathBuf::from(state_dir).join("cvmd.sock"))
}

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
            assert_eq!(s.run.rootfs.idmap, IdMapSetting::Auto, "{runtime}");
            assert!(!s.run.rootfs.idmap.host_userns());
        }
    }

    #[test]
    fn none_under_runc_is_refused_naming_the_unsafe_setting() {
        let e = resolve(&["--runtime", "runc"], &[("CVMD_IDMAP", "none")]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("invalid CVMD_IDMAP"), "{text}");
        assert!(
            text.contains("node's root") && text.contains(crate::idmap::HOST_UNSAFE),
            "{text}"
        );
        // sysbox-runc allocates a mapping itself: its contract.
        let s = resolve(&["--runtime", "sysbox-runc", "--idmap", "none"], &[]).unwrap();
        assert_eq!(s.run.rootfs.idmap, IdMapSetting::None);
    }

    #[test]
    fn the_host_user_namespace_only_by_its_unsafe_name_and_only_under_runc() {
        let s = resolve(&["--runtime", "runc", "--idmap", "host-unsafe"], &[]).unwrap();
        assert!(s.run.rootfs.idmap.host_userns());
        let e = resolve(&["--runtime", "sysbox-runc", "--idmap", "host-unsafe"], &[]).unwrap_err();
        assert!(e.to_string().contains("runc only"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let s = resolve(&[], &[]).unwrap();
        assert_eq!(s.run.pull.cache_dir, PathBuf::from("/var/lib/cvmd"));
        assert_eq!(s.run.pull.concurrency, 4);
        assert_eq!(
            s.run.pull.registry.docker_config,
            PathBuf::from("/root/.docker/config.json")
        );
        assert_eq!(s.run.pull.platform, Platform::host());
        assert_eq!(s.run.api.socket, PathBuf::from("/run/cvmd/cvmd.sock"));
        assert_eq!(s.run.api.admin_group, None);
        assert_eq!(s.run.backend.choice, crate::backend::Choice::Native);
        assert_eq!(
            s.run.backend.containerd.socket,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(s.run.backend.containerd.namespace, "cvmd");
    }

    #[test]
    fn the_socket_follows_the_state_dir_and_the_admin_group_must_exist() {
        let s = resolve(&[], &[("CVMD_STATE_DIR", "/tmp/x")]).unwrap();
        assert_eq!(s.run.api.socket, PathBuf::from("/tmp/x/cvmd.sock"));
        let e = resolve(&[], &[("CVMD_ADMIN_GROUP", "no-such-group-cvmd")]).unwrap_err();
        assert!(e.problems[0].contains("CVMD_ADMIN_GROUP"), "{e}");
        let s = resolve(&[], &[("CVMD_ADMIN_GROUP", "4242")]).unwrap();
        assert_eq!(s.run.api.admin_group.as_deref(), Some("4242"));
    }

    #[test]
    fn flag_beats_cvmd_env_beats_envbox_alias() {
        let env = [("CVMD_IMAGE", "a:1"), ("CODER_INNER_IMAGE", "b:1")];
        assert_eq!(
            resolve(&[], &env).unwrap().run.image.as_deref(),
            Some("a:1")
        );
        assert_eq!(
            resolve(&[], &env[1..]).unwrap().run.image.as_deref(),
            Some("b:1")
        );
        assert_eq!(
            resolve(&["--image", "c:1"], &env)
                .unwrap()
                .run
                .image
                .as_deref(),
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
        assert_eq!(s.run.image.as_deref(), Some("f:1"));
        assert_eq!(s.run.pull.registry.insecure_registries, ["a:5000", "b"]);
        assert_eq!(s.run.pull.concurrency, 8);
        let s = resolve(&[], &[("CVMD_CONFIG", p), ("CVMD_IMAGE", "e:1")]).unwrap();
        assert_eq!(s.run.image.as_deref(), Some("e:1"));
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
        assert_eq!(
            s.run.pull.registry.mirrors["docker.io"],
            ["m1:5000", "https://m2"]
        );
        assert_eq!(s.run.pull.registry.mirrors["quay.io"], ["m3"]);
    }

    #[test]
    fn network_settings_resolve_and_report_bad_values() {
        let s = resolve(&[], &[]).unwrap();
        assert_eq!(s.run.network.mode(), crate::network::Mode::Veth);
        assert_eq!(s.run.network.subnet.to_string(), "172.19.0.0/30");
        let s = resolve(
            &["--network", "veth", "--mtu", "1400"],
            &[("CVMD_SUBNET", "10.1.0.0/29"), ("CVMD_PORTS", "8080:80")],
        )
        .unwrap();
        assert_eq!(s.run.network.mode(), crate::network::Mode::Veth);
        assert_eq!(s.run.network.mtu, Some(1400));
        assert_eq!(s.run.network.subnet.inner().to_string(), "10.1.0.2");
        assert_eq!(s.run.network.ports.len(), 1);
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
    #[test]
    fn cvmctl_finds_the_socket_as_cvmd_places_it() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        }
        let socket = |pairs: &[(&str, &str)]| control_socket(None, &env(pairs));
        assert_eq!(socket(&[]).unwrap(), PathBuf::from("/run/cvmd/cvmd.sock"));
        assert_eq!(
            socket(&[("CVMD_STATE_DIR", "/var/lib/cvmd-state")]).unwrap(),
            PathBuf::from("/var/lib/cvmd-state/cvmd.sock")
        );
        let both = [("CVMD_STATE_DIR", "/s"), ("CVMD_SOCKET", "/x/c.sock")];
        assert_eq!(socket(&both).unwrap(), PathBuf::from("/x/c.sock"));
        assert_eq!(
            control_socket(Some("/flag.sock"), &env(&both)).unwrap(),
            PathBuf::from("/flag.sock")
        );
        // The config file: its state_dir, and its socket over that.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cvmd.toml");
        let path = file.to_str().unwrap();
        std::fs::write(&file, "state_dir = \"/from/file\"\nimage = \"busybox\"\n").unwrap();
        assert_eq!(
            socket(&[("CVMD_CONFIG", path)]).unwrap(),
            PathBuf::from("/from/file/cvmd.sock")
        );
        let with_env = [("CVMD_CONFIG", path), ("CVMD_STATE_DIR", "/env")];
        assert_eq!(
            socket(&with_env).unwrap(),
            PathBuf::from("/env/cvmd.sock"),
            "the environment over the file, as for cvmd"
        );
        std::fs::write(&file, "socket = \"/f/s.sock\"\n").unwrap();
        assert_eq!(socket(&with_env).unwrap(), PathBuf::from("/f/s.sock"));
        std::fs::write(&file, "nonsense = 1\n").unwrap();
        assert!(socket(&with_env).unwrap_err().contains("unknown setting"));
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
