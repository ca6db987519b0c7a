//! `cvmd run`'s data path, stage by stage: image -> rootfs -> bundle ->
//! runtime create/start -> supervise -> delete, unmount, exit code.
//!
//! Order matters for PID 1: the reaper starts only after the image is ready
//! and the rootfs is mounted, because pulling (credential helpers) and ID
//! mapping (a user-namespace child waited with __WCLONE) wait for their own
//! children, and a `waitpid(-1)` reaper running then would steal those
//! statuses. From the reaper's start on, every child goes through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

use crate::bundle::{self, BundleInput, HostFiles, ImageRun, Limits, Overrides, RuntimeFlavor};
use crate::config::{IdMapSetting, Settings};
use crate::launch;
use crate::network;
use crate::progress::PlainLines;
use crate::registry::Reference;
use crate::rootfs;
use crate::runtime::{ContainerIo, Runtime};
use crate::supervisor::reaper::Reaper;
use crate::supervisor::signals::{self, StopPolicy};

/// One phase's duration, for the log and (later) the status API.
#[derive(Debug, Default)]
pub struct Timeline(Vec<(&'static str, std::time::Duration)>);

impl Timeline {
    fn time<T>(&mut self, phase: &'static str, started: Instant, value: T) -> T {
        let took = started.elapsed();
        tracing::info!(phase, elapsed_ms = took.as_secs_f64() * 1e3, "phase done");
        self.0.push((phase, took));
        value
    }
}

/// Runs the workspace to its end; returns the exit code cvmd should exit
/// with (the workspace's, 128+signal when signalled).
pub async fn run(settings: &Settings) -> anyhow::Result<i32> {
    let mut timeline = Timeline::default();
    let image = settings
        .image
        .as_deref()
        .context("no workspace image: set CVMD_IMAGE (or CODER_INNER_IMAGE)")?;
    let reference: Reference = image.parse()?;
    // Listening from the start: PID 1 ignores signals it has no handler
    // for, and a stop asked for during a long pull must be honoured.
    let mut signals = signals::listen()?;
    // Before anything is downloaded: a host that cannot run the workspace
    // says why at once, with the fixes.
    let t = Instant::now();
    crate::preflight::at_start(settings).await?;
    timeline.time("preflight", t, ());
    let ws_dir = settings
        .state_dir
        .join("workspaces")
        .join(&settings.workspace);
    std::fs::create_dir_all(&ws_dir)
        .with_context(|| format!("workspace state dir {}", ws_dir.display()))?;

    let t = Instant::now();
    let backend = crate::backend::Backend::select(settings).await?;
    let ready = tokio::select! {
        ready = backend.ensure(settings, &reference, settings.pull_policy, &PlainLines) => ready?,
        signal = stop_requested(&mut signals) => {
            tracing::info!(signal, "stop requested before the workspace booted");
            return Ok(128 + signal);
        }
    };
    timeline.time("image", t, ());

    let t = Instant::now();
    let target = ws_dir.join("rootfs");
    let rootfs = backend
        .mount_rootfs(settings, &ready, &ws_dir, &target)
        .await?;
    let idmap = rootfs.idmap;
    timeline.time("rootfs", t, ());

    let result = boot(
        settings,
        &ready,
        &ws_dir,
        &target,
        idmap,
        signals,
        &mut timeline,
    )
    .await;
    launch::mounts::teardown(&ws_dir.join("mounts"));
    if let Err(e) = backend.release(rootfs).await {
        tracing::warn!(error = %e, backend = backend.name(), "cannot release the workspace rootfs");
    }
    result
}

async fn boot(
    settings: &Settings,
    image: &crate::backend::ReadyImage,
    ws_dir: &Path,
    rootfs_dir: &Path,
    idmap: Option<rootfs::IdMap>,
    signals: tokio::sync::mpsc::Receiver<i32>,
    timeline: &mut Timeline,
) -> anyhow::Result<i32> {
    let t = Instant::now();
    let flavor = RuntimeFlavor::of_runtime(&settings.runtime);
    let hostname = settings
        .hostname
        .clone()
        .unwrap_or_else(|| settings.workspace.clone());
    let host_files = host_files(ws_dir, &hostname)?;
    let mut input = BundleInput::new(&image.reference, rootfs_dir, flavor);
    input.image_run = ImageRun::from_oci(&image.config);
    input.overrides = Overrides {
        command: settings.command.clone(),
        user: settings.user.clone(),
        working_dir: settings.workdir.clone(),
        hostname: None,
    };
    input.hostname = hostname;
    input.env_passthrough = settings.envs.clone();
    input.outer_env = std::env::vars().collect::<BTreeMap<_, _>>();
    input.idmap = idmap;
    input.host_files = host_files;
    input.mounts = user_mounts(settings, flavor, idmap, ws_dir)?;
    input.tun = settings.add_tun;
    input.fuse = settings.add_fuse;
    if settings.add_gpu {
        add_gpus(settings, &mut input)?;
    }
    input.limits = Limits {
        cpus: settings.cpus,
        memory: settings.memory,
    }
    .or(bundle::outer_limits());
    let bundle_dir = ws_dir.join("bundle");
    let info = bundle::write_bundle(&bundle_dir, &input)?;
    tracing::info!(init = info.init, verdict = ?info.init_verdict, args = ?info.args, "bundle written");
    timeline.time("bundle", t, ());

    let reaper = Reaper::start()?;
    let runtime_root = settings
        .runtime_root
        .clone()
        .unwrap_or_else(|| settings.state_dir.join("runtime"));
    let log_dir = ws_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("runtime log dir {}", log_dir.display()))?;
    let runtime = Runtime::new(
        resolve_runtime(&settings.runtime)?,
        &log_dir,
        Arc::new(reaper.clone()),
    )
    .with_root(&runtime_root)
    .with_timeout(settings.runtime_timeout);
    let mut daemons = match flavor {
        RuntimeFlavor::Sysbox => launch::sysbox::start(&reaper, &sysbox_config(settings)).await?,
        RuntimeFlavor::Runc => launch::sysbox::Daemons::none(),
    };
    let id = settings.workspace.as_str();
    // sysbox-runc's rule: always delete, also what a crash left behind.
    let _ = runtime.delete(id, true).await;

    let t = Instant::now();
    let pid_file = ws_dir.join("init.pid");
    let created = match runtime
        .create(
            id,
            &bundle_dir,
            &pid_file,
            ContainerIo::Pipes { stdin: false },
        )
        .await
    {
        Ok(created) => created,
        Err(e) => {
            // A create that timed out may have left a half-made container.
            let _ = runtime.delete(id, true).await;
            return Err(e.into());
        }
    };
    timeline.time("create", t, ());
    let exit = match reaper.watch(created.pid) {
        Ok(exit) => exit,
        Err(e) => {
            let _ = runtime.delete(id, true).await;
            return Err(e.into());
        }
    };
    for (stream, pipe) in [("stdout", created.io.stdout), ("stderr", created.io.stderr)] {
        if let Some(pipe) = pipe {
            tokio::spawn(log_lines(stream, pipe));
        }
    }
    let t = Instant::now();
    let plan = network::Plan::new(id, &settings.network);
    let net = match network::setup(&plan, created.pid, Arc::new(reaper.clone())).await {
        Ok(net) => net,
        Err(e) => {
            let _ = runtime.delete(id, true).await;
            return Err(e.into());
        }
    };
    timeline.time("network", t, ());
    // The network goes on every path from here: start failure, the
    // workspace's end, a stop by signal (supervise returns then too).
    let outcome = async {
        let t = Instant::now();
        if let Err(e) = runtime.start(id).await {
            let _ = runtime.delete(id, true).await;
            return Err(anyhow::Error::from(e));
        }
        timeline.time("start", t, ());
        tracing::info!(id, pid = created.pid, "workspace running");
        // From here on `died` below watches the daemons; one that died during
        // create or start is reported now.
        if let Err(death) = daemons.check() {
            end_now(&runtime, id).await;
            return Err(death.into());
        }
        if let Some(script) = settings.bootstrap_script.clone() {
            let (runtime, id) = (runtime.clone(), id.to_string());
            tokio::spawn(async move { launch::bootstrap::run(&runtime, &id, &script).await });
        }
        let supervised = signals::supervise(
            &runtime,
            id,
            exit,
            StopPolicy {
                stop_signal: info.stop_signal,
                grace: settings.stop_timeout,
                system_init: info.init,
            },
            signals,
        );
        tokio::select! {
            outcome = supervised => Ok(outcome?),
            death = daemons.died() => {
                end_now(&runtime, id).await;
                Err(death.into())
            }
        }
    }
    .await;
    net.teardown().await;
    let outcome = outcome?;
    daemons.stop().await;
    if let Err(e) = &outcome.deleted {
        tracing::warn!(error = %e, "the runtime could not delete the workspace container");
    }
    tracing::info!(exit = %outcome.exit, code = outcome.code, "workspace ended");
    Ok(outcome.code)
}

/// Kills and deletes the workspace container: a container breaks without
/// the Sysbox daemons, so one's death ends it at once.
async fn end_now(runtime: &Runtime, id: &str) {
    let _ = runtime.kill(id, libc::SIGKILL).await;
    let _ = runtime.delete(id, true).await;
}

/// The user mounts, staged as ID-mapped mounts when the workspace has an
/// ID range (see `launch::mounts`).
fn user_mounts(
    settings: &Settings,
    flavor: RuntimeFlavor,
    idmap: Option<rootfs::IdMap>,
    ws_dir: &Path,
) -> anyhow::Result<Vec<bundle::UserMount>> {
    let mounts = match &settings.mounts {
        Some(m) => bundle::parse_mounts(m, flavor)?,
        None => return Ok(Vec::new()),
    };
    let Some(map) = idmap else {
        return Ok(mounts);
    };
    let staged = launch::mounts::prepare(&mounts, &map, &ws_dir.join("mounts"))?;
    for (m, how) in &staged {
        tracing::info!(destination = %m.destination.display(), mapped = ?how, "user mount");
    }
    Ok(staged.into_iter().map(|(m, _)| m).collect())
}

/// The outer container's NVIDIA nodes, driver libraries and `NVIDIA_*`
/// variables into the bundle (see `launch::gpu`).
fn add_gpus(settings: &Settings, input: &mut BundleInput) -> anyhow::Result<()> {
    let lib_dir = settings
        .usr_lib_dir
        .clone()
        .unwrap_or_else(launch::gpu::default_lib_dir);
    let gpus = launch::gpu::discover(&settings.gpu_dev_dir, &lib_dir)?;
    tracing::info!(
        devices = gpus.devices.len(),
        libs = gpus.libs.len(),
        "GPUs passed on"
    );
    input.gpus = gpus.devices;
    input.gpu_libs = gpus.libs;
    input
        .env_passthrough
        .push(launch::gpu::ENV_PATTERN.to_string());
    Ok(())
}

fn sysbox_config(settings: &Settings) -> launch::sysbox::Config {
    launch::sysbox::Config {
        mgr: settings.sysbox_mgr.clone(),
        fs: settings.sysbox_fs.clone(),
        run_dir: settings.sysbox_run_dir.clone(),
        timeout: settings.sysbox_timeout,
    }
}

/// Resolves at the first stop request (SIGTERM, SIGINT); other signals
/// have no container to go to yet.
async fn stop_requested(signals: &mut tokio::sync::mpsc::Receiver<i32>) -> i32 {
    loop {
        match signals.recv().await {
            Some(s) if signals::STOP_REQUESTS.contains(&s) => return s,
            Some(_) => {}
            None => std::future::pending::<()>().await,
        }
    }
}

/// The ID mapping a setting asks for; `auto` is the workspace's own range
/// on the node.
pub async fn idmap_for(
    setting: IdMapSetting,
    cache_dir: &Path,
    workspace: &str,
) -> Result<Option<rootfs::IdMap>, crate::store::StoreError> {
    Ok(match setting {
        IdMapSetting::None => None,
        IdMapSetting::Auto => Some(crate::store::idranges::allocate(cache_dir, workspace).await?),
        IdMapSetting::Explicit(m) => Some(m),
    })
}

/// The workspace's resolv.conf (the outer one, minus nameservers only the
/// outer netns reaches), hostname and hosts files.
fn host_files(ws_dir: &Path, hostname: &str) -> anyhow::Result<HostFiles> {
    let write = |name: &str, content: &[u8]| -> anyhow::Result<PathBuf> {
        let path = ws_dir.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let resolv = network::dns::workspace_resolv_conf();
    if let Some(warning) = &resolv.warning {
        tracing::warn!("{warning}");
    }
    let resolv = resolv.content.into_bytes();
    Ok(HostFiles {
        resolv_conf: Some(write("resolv.conf", &resolv)?),
        hostname: Some(write("hostname", format!("{hostname}\n").as_bytes())?),
        hosts: Some(write(
            "hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n").as_bytes(),
        )?),
    })
}

/// A name on PATH or a path, as the runtime setting allows.
fn resolve_runtime(runtime: &str) -> anyhow::Result<PathBuf> {
    if runtime.contains('/') {
        return Ok(PathBuf::from(runtime));
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(runtime))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("OCI runtime {runtime:?} not found on PATH: install it, or set CVMD_RUNTIME to runc where Sysbox is absent")
        })
}

async fn log_lines(stream: &'static str, pipe: tokio::net::unix::pipe::Receiver) {
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "workspace", stream, "{line}");
    }
}
