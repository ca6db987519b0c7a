//! Settings: each is a flag, a `CVMD_*` environment variable, an envbox
//! `CODER_*` alias where envbox has the same setting, and a key of the
//! optional TOML file, in that order of precedence. One table below is the
//! single source of the flags, the help text and the defaults; each
//! setting is parsed once, into the options of the stage that reads it
//! (`workspace::RunOptions` groups them), so no stage reads `config`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgMatches};

mod source;

use source::Resolver;

use crate::backend::{BackendOptions, RootfsOptions};
use crate::bundle::RuntimeFlavor;
use crate::idmap::IdMapSetting;
use crate::image::{PullOptions, RegistryAccess};
use crate::registry::manifest::Platform;
use crate::workspace::{
    ApiOptions, BundleOptions, GpuOptions, Identity, RunOptions, RuntimeOptions, SuperviseOptions,
};

#[derive(Debug)]
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
    Spec { key: "lazy", env: "CVMD_LAZY", envbox: None, default: Some("auto"), help: "lazy start: auto (an image not in the node cache whose missing layers are eStargz or zstd:chunked boots before it is downloaded, its files fetched on first read, when FUSE works) or off (pull every image whole first)" },
    Spec { key: "lazy_deadline", env: "CVMD_LAZY_DEADLINE", envbox: None, default: Some("30"), help: "seconds a lazily started workspace's read waits for the registry before it fails with EIO (1-3600)" },
    Spec { key: "pull_concurrency", env: "CVMD_PULL_CONCURRENCY", envbox: None, default: Some("8"), help: "layers downloaded at once (1-64): on a high-latency link one connection does not fill it, and a layer left to download alone at the end was the slow part (bench/run.sh, slow phase)" },
    Spec { key: "pull_bandwidth", env: "CVMD_PULL_BANDWIDTH", envbox: None, default: Some("0"), help: "bytes per second (or with KiB/MiB/GiB) that a pull's layers use together while they download, a lazy start's background download included (its on-demand reads are not held back); 0: the link's speed" },
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
    let disk = crate::disk::DiskSettings {
        persist_dir: r.opt("persist_dir", absolute),
        persist: r.get("persist", str::parse),
        paths: r.get("persist_paths", crate::disk::parse_paths),
        on_image_change: r.get("on_image_change", str::parse),
        size: r.opt("disk_size", |v| match parse_size(v)? {
            n if n >= 16 << 20 => Ok(n),
            _ => Err(format!(
                "{v:?} is under 16MiB, too small for ext4's own metadata"
            )),
        }),
    };
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
            max: r.get("max_reboots", |v| whole(v, 0, 1000)),
            window: r.get("reboot_window", seconds(1, 86400)),
        },
        bootstrap_script: r
            .opt("bootstrap_script", |v| Ok(v.to_string()))
            .filter(|s| !s.trim().is_empty()),
        termination_log: r.get("termination_log", absolute),
    };
    let api = api_options(r, &state_dir);
    let lazy = crate::lazy::LazyOptions {
        mode: r.get("lazy", str::parse),
        deadline: std::time::Duration::from_secs(r.get("lazy_deadline", |v| whole(v, 1, 3600))),
    };
    RunOptions {
        image,
        identity,
        state_dir,
        disk,
        pull,
        lazy,
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
        retries: r.get("pull_retries", |v| whole(v, 1, 100)),
    };
    PullOptions {
        cache_dir: r.get("cache_dir", absolute),
        registry,
        platform: r
            .opt("platform", str::parse::<Platform>)
            .unwrap_or_else(Platform::host),
        policy: r.get("pull_policy", str::parse),
        concurrency: r.get("pull_concurrency", |v| whole(v, 1, 64)),
        bandwidth: r.get("pull_bandwidth", parse_size),
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

fn whole<T: TryFrom<u64>>(v: &str, lo: u64, hi: u64) -> Result<T, String> {
    match v.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => {
            T::try_from(n).map_err(|_| format!("{v:?} is too large here"))
        }
        _ => Err(format!("{v:?} is not a whole number from {lo} to {hi}")),
    }
}

/// Whole seconds from `lo` to `hi`.
fn seconds(lo: u64, hi: u64) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| whole::<u64>(v, lo, hi).map(Duration::from_secs)
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod readme {
    /// The README's settings table is the reference users read: it must
    /// name every setting.
    #[test]
    fn readme_lists_every_setting() {
        let readme = include_str!("../../README.md");
        for s in super::SETTINGS.iter().filter(|s| s.key != "config") {
            assert!(
                readme.contains(&format!("`{}`", s.env)),
                "README lacks {}",
                s.env
            );
        }
    }
}
