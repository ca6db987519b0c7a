//! The OCI runtime bundle of the inner container: `config.json` from the
//! image config, init detection, the user, mounts, devices and limits.
//!
//! Decisions are plain functions in the submodules (`process::plan`,
//! `spec::build_spec`, `mounts::choose_lib_dir`, ...); the file reads they
//! need (the rootfs's `/sbin/init` and `/etc/passwd`, the outer cgroup,
//! the bounding set) sit in small functions at the edges, and
//! [`write_bundle`] strings them together.

mod capabilities;
mod env;
mod error;
mod init;
mod init_flavor;
mod inroot;
mod limits;
mod mounts;
mod process;
pub mod seccomp;
mod signal;
mod spec;
mod user;

#[cfg(test)]
mod contract_tests;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use capabilities::{
    bit as capability_bit, known as known_capabilities, own_bounding_set, parse_capbnd,
    short_name as capability_name,
};
pub use env::{passthrough_env, sysbox_accepts, SYSBOX_KNOBS};
pub use error::BundleError;
pub use init::{detect_init, InitVerdict, NoInit, INIT_PATH};
pub use init_flavor::InitFlavor;
pub use limits::{outer_limits, parse_cpus, read_limits, Limits};
pub use mounts::{
    choose_lib_dir, device_node_name, multiarch_triplet, parse_mount, parse_mounts, Device,
    UserMount,
};
pub use process::{ImageRun, Overrides, ProcessPlan, DEFAULT_PATH};
pub use signal::{parse_signal, SYSTEMD_STOP_SIGNAL};
pub use spec::{build_spec, validate_idmap, HostFiles, SpecInput};
pub use user::{parse_user, read_etc, resolve_user, Id, ResolvedUser};

use cvmd_rootfs::IdMap;

/// Which OCI runtime reads the bundle: sysbox-runc adds user and cgroup
/// namespaces, its own /proc, /sys, /dev and the systemd mounts; plain
/// runc needs them in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavor {
    Sysbox,
    Runc,
}

impl RuntimeFlavor {
    /// From the runtime setting (a path or name): sysbox-runc by its name.
    pub fn of_runtime(runtime: &str) -> Self {
        let name = Path::new(runtime)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(runtime);
        if name.starts_with("sysbox") {
            RuntimeFlavor::Sysbox
        } else {
            RuntimeFlavor::Runc
        }
    }
}

#[derive(Debug, Clone)]
pub struct BundleInput {
    /// The image reference, for messages.
    pub image: String,
    /// The assembled rootfs (`root.path`).
    pub rootfs: PathBuf,
    pub image_run: ImageRun,
    pub flavor: RuntimeFlavor,
    pub overrides: Overrides,
    /// Used unless `overrides.hostname` is set.
    pub hostname: String,
    /// Names and `PREFIX*` patterns taken from `outer_env`.
    pub env_passthrough: Vec<String>,
    pub outer_env: BTreeMap<String, String>,
    pub idmap: Option<IdMap>,
    pub host_files: HostFiles,
    pub mounts: Vec<UserMount>,
    pub tun: bool,
    pub fuse: bool,
    /// NVIDIA device nodes (`/dev/nvidia0`, `/dev/nvidiactl`, ...).
    pub gpus: Vec<Device>,
    /// Host paths of GPU driver libraries, bound read-only into the image's
    /// library dir.
    pub gpu_libs: Vec<PathBuf>,
    pub limits: Limits,
    /// Where cvmd made the workspace's own device nodes (runc in a user
    /// namespace, `launch::devices`): bound in from there, named by
    /// [`device_node_name`], instead of the runtime's bind of the outer ones.
    pub device_dir: Option<PathBuf>,
    /// The capability bounding set to stay within; `None`: cvmd's own.
    pub bounding: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

impl BundleInput {
    /// The minimal input: everything else empty or off.
    pub fn new(image: &str, rootfs: &Path, flavor: RuntimeFlavor) -> Self {
        BundleInput {
            image: image.into(),
            rootfs: rootfs.into(),
            image_run: ImageRun::default(),
            flavor,
            overrides: Overrides::default(),
            hostname: "workspace".into(),
            env_passthrough: Vec::new(),
            outer_env: BTreeMap::new(),
            idmap: None,
            host_files: HostFiles::default(),
            mounts: Vec::new(),
            tun: false,
            fuse: false,
            gpus: Vec::new(),
            gpu_libs: Vec::new(),
            device_dir: None,
            limits: Limits::default(),
            bounding: None,
            oom_score_adj: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    pub init: bool,
    /// Why init was or was not found, for the log.
    pub init_verdict: InitVerdict,
    /// Which init boots, when one does.
    pub init_flavor: Option<InitFlavor>,
    pub stop_signal: i32,
    /// The workspace's memory limit in bytes, when it has one.
    pub memory_limit: Option<u64>,
    pub args: Vec<String>,
    pub user: ResolvedUser,
    /// Where GPU libraries were bound, when any were.
    pub lib_dir: Option<PathBuf>,
    pub config: PathBuf,
}

/// Whether `path` is a directory inside the rootfs (links resolved in it).
pub fn dir_in_rootfs(rootfs: &Path, path: &Path) -> bool {
    let Ok(root) = inroot::open_root(rootfs) else {
        return false;
    };
    matches!(inroot::resolve(&root, path), Ok(inroot::Outcome::Found(f))
        if rustix::fs::FileType::from_raw_mode(f.stat.st_mode) == rustix::fs::FileType::Directory)
}

/// The device nodes the workspace gets: tun, fuse, then the GPUs.
pub fn devices_of(input: &BundleInput) -> Vec<Device> {
    let mut devices = Vec::new();
    if input.tun {
        devices.push(Device::tun());
    }
    if input.fuse {
        devices.push(Device::fuse());
    }
    devices.extend(input.gpus.iter().cloned());
    devices
}

/// Decides everything and returns the spec with what the supervisor needs
/// to know; reads the rootfs and, unless given, the bounding set.
pub fn plan_bundle(
    input: &BundleInput,
) -> Result<(oci_spec::runtime::Spec, BundleInfo), BundleError> {
    let rootfs = std::path::absolute(&input.rootfs).map_err(|source| BundleError::Rootfs {
        path: input.rootfs.clone(),
        source,
    })?;
    let verdict = detect_init(&rootfs)?;
    let init = process::boots_init(&input.overrides, verdict.is_present());
    let init_flavor = if init {
        let flavor = init_flavor::detect(&rootfs).map_err(|source| BundleError::Rootfs {
            path: rootfs.clone(),
            source,
        })?;
        Some(flavor)
    } else {
        None
    };
    tracing::info!(image = %input.image, init, init_flavor = init_flavor.map(|f| f.as_str()), "{verdict}");
    let user_value =
        process::user_value(&input.image_run, &input.overrides, init).unwrap_or_default();
    let user = user::resolve_in_rootfs(&rootfs, &input.image, &user_value)?;
    // The keep-alive needs a shell and `sleep` (without it the loop would spin).
    let runs = |p: &str| init::executable_in(&rootfs, Path::new(p)).map(|v| v.is_present());
    let has_sh = runs("/bin/sh")? && (runs("/bin/sleep")? || runs("/usr/bin/sleep")?);
    let passthrough = passthrough_env(&input.env_passthrough, &input.outer_env);
    let plan = process::plan(
        &input.image,
        &input.image_run,
        &input.overrides,
        input.flavor,
        init_flavor,
        has_sh,
        user,
        &passthrough,
    )?;
    let devices = devices_of(input);
    let mut all_mounts = input.mounts.clone();
    let lib_dir = if input.gpu_libs.is_empty() {
        None
    } else {
        let dir = choose_lib_dir(mounts::multiarch_triplet(), &|p| dir_in_rootfs(&rootfs, p));
        all_mounts.extend(mounts::gpu_lib_mounts(&input.gpu_libs, &dir)?);
        Some(dir)
    };
    if input.flavor == RuntimeFlavor::Sysbox {
        for m in &all_mounts {
            if let Some(base) = mounts::SYSBOX_OWNED
                .iter()
                .find(|b| m.destination.starts_with(b))
            {
                return Err(BundleError::BadMount {
                    spec: format!("{}:{}", m.source.display(), m.destination.display()),
                    reason: format!("sysbox mounts its own {base} and drops mounts at or under it"),
                });
            }
        }
    }
    let bounding = match input.bounding {
        Some(b) => b,
        None => own_bounding_set()?,
    };
    let hostname = input
        .overrides
        .hostname
        .as_deref()
        .unwrap_or(&input.hostname);
    let spec = build_spec(&SpecInput {
        flavor: input.flavor,
        rootfs: &rootfs,
        hostname,
        process: &plan,
        idmap: input.idmap,
        host_files: &input.host_files,
        mounts: &all_mounts,
        devices: &devices,
        device_dir: input.device_dir.as_deref(),
        limits: input.limits,
        bounding,
        oom_score_adj: input.oom_score_adj,
    })?;
    let info = BundleInfo {
        init,
        init_verdict: verdict,
        init_flavor,
        stop_signal: plan.stop_signal,
        memory_limit: input.limits.memory,
        args: plan.args,
        user: plan.user,
        lib_dir,
        config: PathBuf::new(),
    };
    Ok((spec, info))
}

/// Writes `<dir>/config.json` (atomically: a temporary file, fsync,
/// rename, fsync of the dir) for `input`.
pub fn write_bundle(dir: &Path, input: &BundleInput) -> Result<BundleInfo, BundleError> {
    let span = tracing::info_span!("bundle", image = %input.image, dir = %dir.display());
    let _enter = span.enter();
    let (spec, mut info) = plan_bundle(input)?;
    let path = dir.join("config.json");
    write_atomic(
        dir,
        &path,
        &serde_json::to_vec_pretty(&spec).expect("a spec serialises"),
    )?;
    tracing::info!(init = info.init, args = ?info.args, uid = info.user.uid, "bundle written");
    info.config = path;
    Ok(info)
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let err = |source| BundleError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".config.json.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}
