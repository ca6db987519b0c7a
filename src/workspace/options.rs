//! What `cvmd run` reads, grouped by the stage that uses it; `config`
//! builds it from the settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::{BackendOptions, RootfsOptions};
use crate::image::PullOptions;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The workspace image's reference, unparsed.
    pub image: Option<String>,
    pub identity: Identity,
    /// This workspace's state (bundle, upper dir, runtime root).
    pub state_dir: PathBuf,
    /// What persists, where, and what an image change does to it.
    pub disk: crate::disk::DiskSettings,
    pub pull: PullOptions,
    /// Whether and how a cold start boots before its image is downloaded.
    pub lazy: crate::lazy::LazyOptions,
    pub backend: BackendOptions,
    pub rootfs: RootfsOptions,
    pub preflight: crate::preflight::Options,
    pub shiftfs: crate::shiftfs::Options,
    pub bundle: BundleOptions,
    pub runtime: RuntimeOptions,
    pub sysbox: crate::launch::sysbox::Config,
    pub network: crate::network::NetworkSettings,
    pub supervise: SuperviseOptions,
    pub api: ApiOptions,
}

/// The workspace's name, and the pod namespace that makes it unique on the
/// node.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub pod_namespace: Option<String>,
}

impl Identity {
    /// The workspace's identity on the node, which every pod on it shares
    /// a cache with: `NAMESPACE/NAME` when the pod's namespace is known
    /// (pod names are unique only within one), else the name. Its lease
    /// and its host ID range are keyed by this; its container id and state
    /// dir stay the plain name (they are the pod's own).
    pub fn node(&self) -> String {
        match &self.pod_namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What goes into the OCI bundle beside the image's config.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// The workspace's hostname [default: its name].
    pub hostname: Option<String>,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// `SRC:DST[:ro],...`, parsed against the runtime flavor.
    pub mounts: Option<String>,
    /// Outer variables passed in, by name or `PREFIX*`.
    pub envs: Vec<String>,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub tun: bool,
    pub fuse: bool,
    /// The outer container's GPUs, when asked for.
    pub gpu: Option<GpuOptions>,
}

#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// The NVIDIA driver libraries [default: /usr/lib/<multiarch triplet>].
    pub lib_dir: Option<PathBuf>,
    /// Where the nvidia* device nodes are.
    pub dev_dir: PathBuf,
}

/// The OCI runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Name on PATH or path.
    pub name: String,
    /// Its --root [default: STATE_DIR/runtime].
    pub root: Option<PathBuf>,
    /// How long each create/start/kill/delete/state call may take.
    pub timeout: Duration,
}

/// How the running workspace is looked after.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// How long the workspace has to stop before SIGKILL.
    pub stop_timeout: Duration,
    pub reboots: crate::supervisor::reboot::RebootPolicy,
    pub bootstrap_script: Option<String>,
    pub termination_log: PathBuf,
}

/// The control API and the metrics endpoint.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub socket: PathBuf,
    pub admin_group: Option<String>,
    pub metrics_addr: Option<std::net::SocketAddr>,
}
