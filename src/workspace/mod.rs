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

use anyhow::Context;

mod lazy;
mod options;

pub use options::{
    ApiOptions, BundleOptions, GpuOptions, Identity, RunOptions, RuntimeOptions, SuperviseOptions,
};

use crate::backend::{Backend, Holder, MountRequest};
use crate::bundle::{self, BundleInput, HostFiles, ImageRun, Limits, Overrides, RuntimeFlavor};
use crate::launch;
use crate::network;
use crate::progress::PlainLines;
use crate::registry::Reference;
use crate::rootfs;
use crate::runtime::{ContainerIo, Runtime};
use crate::supervisor::lifecycle::Phase;
use crate::supervisor::logbook::{LogBook, Source};
use crate::supervisor::loglines;
use crate::supervisor::oom;
use crate::supervisor::reaper::Reaper;
use crate::supervisor::reboot::{self, RebootBudget};
use crate::supervisor::signals::{self, StopPolicy};
use crate::supervisor::state::{Container, StateHandle, Tee};

/// Runs the workspace to its end; returns the exit code cvmd should exit
/// with (the workspace's, 128+signal when signalled). The control API
/// serves on `settings.api.socket` from the start to the end.
pub async fn run(settings: &RunOptions) -> anyhow::Result<i32> {
    // Listening from the start: PID 1 ignores signals it has no handler
    // for, and a stop asked for during a long pull must be honoured. The
    // API's Stop and Restart feed the same channel as the OS signals.
    let mut os_signals = signals::listen()?;
    let (signal_tx, mut signals) = tokio::sync::mpsc::channel(16);
    let state = StateHandle::new(
        &settings.identity.name,
        &settings.runtime.name,
        signal_tx.clone(),
    );
    let forward = state.clone();
    tokio::spawn(async move {
        while let Some(signal) = os_signals.recv().await {
            if signals::STOP_REQUESTS.contains(&signal) {
                forward.stop_signalled();
            }
            if signal_tx.send(signal).await.is_err() {
                break;
            }
        }
    });
    let server = crate::api::server::serve(
        &settings.api.socket,
        settings.api.admin_group.as_deref(),
        state.clone(),
    )?;
    // Bound before the pull, so a scrape sees the cold start as it happens.
    let _metrics = match settings.api.metrics_addr {
        Some(addr) => Some(crate::metrics::http::serve(addr, state.metrics().clone()).await?),
        None => None,
    };
    let notify = tokio::spawn(crate::supervisor::notify::follow(state.clone()));
    let result = run_with(settings, &state, &mut signals).await;
    if let Ok(0) = result {
        // Status 0 ends the pod for good (restartPolicy OnFailure): its
        // host ID range goes back to the node. Any other end keeps it for
        // the restart, and a node short of ranges reclaims it if the
        // workspace never comes back.
        if let Err(e) =
            crate::store::idranges::release(&settings.pull.cache_dir, &settings.identity.node())
                .await
        {
            tracing::warn!(error = %e, "cannot release the workspace's host ID range");
        }
    }
    match &result {
        Ok(_) => state.enter(Phase::Exited),
        Err(e) => state.fail(&crate::supervisor::termination::error_line(e)),
    }
    // The final phase's STATUS= goes out before cvmd exits.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notify).await;
    server.shutdown().await;
    result
}

async fn run_with(
    settings: &RunOptions,
    state: &StateHandle,
    signals: &mut tokio::sync::mpsc::Receiver<i32>,
) -> anyhow::Result<i32> {
    let image = settings
        .image
        .as_deref()
        .context("no workspace image: set CVMD_IMAGE (or CODER_INNER_IMAGE)")?;
    let reference: Reference = image.parse()?;
    // Before anything is downloaded: a host that cannot run the workspace
    // says why at once, with the fixes (and Status shows the checks).
    let report = crate::preflight::at_start(
        &settings.preflight,
        &settings.backend,
        &settings.shiftfs,
        &settings.disk,
        &settings.state_dir,
    )
    .await?;
    state.set_preflight(report.checks);
    let ws_dir = settings
        .state_dir
        .join("workspaces")
        .join(&settings.identity.name);
    std::fs::create_dir_all(&ws_dir)
        .with_context(|| format!("workspace state dir {}", ws_dir.display()))?;

    state.enter(Phase::Pull);
    state.set_image(&reference.to_string(), "");
    let backend = Backend::select(&settings.backend).await?;
    if matches!(backend, Backend::Native) {
        state
            .metrics()
            .watch_cache(settings.pull.cache_dir.clone(), settings.pull.cache_budget);
    }
    let identity = settings.identity.node();
    let holder = Holder {
        identity: &identity,
        mount: None,
    };
    let progress = Tee(state, &PlainLines);
    let pull_began = std::time::Instant::now();
    let ready = tokio::select! {
        ready = backend.ensure(&settings.pull, &reference, settings.pull.policy, holder, Some(&settings.lazy), &progress) => ready?,
        signal = stop_requested(signals) => {
            tracing::info!(signal, "stop requested before the workspace booted");
            backend.abandon_pulls().await;
            return Ok(128 + signal);
        }
    };
    state.set_image(&ready.reference, &ready.digest.to_string());
    state.set_image_source(&ready.origin);
    state.metrics().image_lookup(!ready.pulled);
    if ready.pulled {
        state.metrics().pulled(pull_began.elapsed());
    }

    state.enter(Phase::Rootfs);
    let target = ws_dir.join("rootfs");
    let disk = crate::disk::prepare(&settings.disk, &ws_dir, &ready.digest)?;
    // From here on the persistent volume is where the disk really is (the
    // mounted image file when the disk has a size).
    let settings = &RunOptions {
        disk: disk.effective.clone(),
        ..settings.clone()
    };
    let watch = disk.bounded.as_ref().map(|b| {
        tokio::spawn(crate::disk::watch_full(
            b.mount.clone(),
            b.size,
            state.clone(),
        ))
    });
    let request = MountRequest {
        identity: &identity,
        disk: disk.dir.clone(),
        target: target.clone(),
        options: settings.rootfs,
        reset: disk.reset,
        carry: disk.carry.clone(),
    };
    let rootfs = match backend
        .mount_rootfs(&settings.pull.cache_dir, &ready, &request)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            end_disk(&disk, watch);
            return Err(e.into());
        }
    };
    // Recorded only once mounted: a start that failed before leaves the
    // old record, and the next start decides again.
    if let Err(e) = crate::disk::write_record(&disk.dir, &ready.digest) {
        tracing::warn!(error = %e, "the next start cannot tell which image this disk was made on");
    }
    let described = disk.describe(&settings.disk, &ready.digest);
    tracing::info!(disk = %disk.dir.display(), "disk: {described}");
    state.set_disk(
        &described,
        matches!(disk.decision, crate::disk::Decision::Changed { .. }),
    );
    let idmap = rootfs.idmap;
    state.set_rootfs(&rootfs.mode.to_string(), &rootfs.idmap_mode.to_string());
    // Started lazily: the rest of the image downloads while it runs.
    let completion = lazy::complete(
        &settings.pull,
        &reference,
        &ready,
        rootfs.lazy_layers(),
        state,
    );
    // Only now, with this workspace's layers leased: a budget gc must never
    // take the image being started, and its failure never fails a start.
    {
        let pull = settings.pull.clone();
        tokio::spawn(async move { crate::image::keep_within_budget(&pull, &[]).await });
    }

    // An unreachable rootfs ends the start here, through the same release
    // as every other end.
    let result = match launch::reach::check(&target, idmap) {
        Ok(()) => boot(settings, &ready, &ws_dir, &target, idmap, signals, state).await,
        Err(e) => Err(e.into()),
    };
    if let Some(task) = completion {
        task.abort();
    }
    launch::mounts::teardown(&ws_dir.join("mounts"));
    launch::devices::teardown(&ws_dir.join("devices"));
    if let Err(e) = backend.release(rootfs).await {
        tracing::warn!(error = %e, backend = backend.name(), "cannot release the workspace rootfs");
    }
    end_disk(&disk, watch);
    result
}

/// Stops watching the disk and unmounts its image file, if it has one.
fn end_disk(disk: &crate::disk::Prepared, watch: Option<tokio::task::JoinHandle<()>>) {
    if let Some(w) = watch {
        w.abort();
    }
    if let Some(b) = &disk.bounded {
        b.unmount();
    }
}

async fn boot(
    settings: &RunOptions,
    image: &crate::backend::ReadyImage,
    ws_dir: &Path,
    rootfs_dir: &Path,
    idmap: Option<rootfs::IdMap>,
    signals: &mut tokio::sync::mpsc::Receiver<i32>,
    state: &StateHandle,
) -> anyhow::Result<i32> {
    state.enter(Phase::Bundle);
    let flavor = RuntimeFlavor::of_runtime(&settings.runtime.name);
    // Before the reaper starts: staging ID-mapped user mounts waits for its
    // own children. A restart reuses this bundle (same rootfs, same mounts).
    let bundle_dir = ws_dir.join("bundle");
    let info = write_bundle(settings, image, ws_dir, rootfs_dir, idmap, &bundle_dir)?;
    tracing::info!(
        init = info.init,
        init_flavor = info.init_flavor.map(|f| f.as_str()),
        stop_signal = info.stop_signal,
        verdict = ?info.init_verdict,
        args = ?info.args,
        "bundle written"
    );

    let reaper = Reaper::start()?;
    let runtime_root = settings
        .runtime
        .root
        .clone()
        .unwrap_or_else(|| settings.state_dir.join("runtime"));
    let log_dir = ws_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("runtime log dir {}", log_dir.display()))?;
    let runtime = Runtime::new(
        resolve_runtime(&settings.runtime.name)?,
        &log_dir,
        Arc::new(reaper.clone()),
    )
    .with_root(&runtime_root)
    .with_timeout(settings.runtime.timeout);
    let mut daemons = match flavor {
        RuntimeFlavor::Sysbox => launch::sysbox::start(&reaper, &settings.sysbox).await?,
        RuntimeFlavor::Runc => launch::sysbox::Daemons::none(),
    };
    let id = settings.identity.name.as_str();
    let mut reboots = RebootBudget::new(settings.supervise.reboots);
    let booted = std::time::Instant::now();
    // One pass per boot: a Restart through the API, or a reboot from
    // inside, stops the container and comes back here, on the same rootfs.
    loop {
        // sysbox-runc's rule: always delete, also what a crash left behind.
        let _ = runtime.delete(id, true).await;
        state.enter(Phase::Create);
        let pid_file = ws_dir.join("init.pid");
        let made = async {
            let created = runtime
                .create(
                    id,
                    &bundle_dir,
                    &pid_file,
                    ContainerIo::Pipes { stdin: false },
                )
                .await?;
            let pid = created.pid;
            let exit = reaper.watch(pid)?;
            let (exit, oom) = oom::watch(pid, exit, state);
            // Before start: systemd as PID 1 in a user namespace needs its
            // cgroups writable by the mapped root (see `launch::cgroups`);
            // another init only loses the nesting of its own cgroups.
            if let (RuntimeFlavor::Runc, Some(map)) = (flavor, idmap) {
                match launch::cgroups::delegate(pid, &map) {
                    Ok(_) => {}
                    Err(e) if !info.init => {
                        tracing::warn!(error = %e, "the workspace's cgroups stay the node root's");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for (source, pipe) in [
                (Source::Stdout, created.io.stdout),
                (Source::Stderr, created.io.stderr),
            ] {
                if let Some(pipe) = pipe {
                    tokio::spawn(log_lines(source, pipe, state.logs().clone()));
                }
            }
            state.enter(Phase::Network);
            let mut plan = network::Plan::new(id, &settings.network);
            plan.link_local_dns = network::plan::link_local_nameservers(
                &std::fs::read_to_string(ws_dir.join("resolv.conf")).unwrap_or_default(),
            );
            let net = network::setup(&plan, pid, Arc::new(reaper.clone())).await?;
            Ok::<_, anyhow::Error>((pid, exit, oom, net))
        }
        .await;
        let (pid, exit, oom, net) = match made {
            Ok(made) => made,
            Err(e) => {
                // Whichever step failed, a create that timed out
                // included: the half-made container goes.
                let _ = runtime.delete(id, true).await;
                return Err(e);
            }
        };
        // The network goes on every path from here: start failure, the
        // workspace's end, a stop by signal (supervise returns then too).
        let outcome = async {
            state.enter(Phase::Start);
            if let Err(e) = runtime.start(id).await {
                let _ = runtime.delete(id, true).await;
                return Err(anyhow::Error::from(e));
            }
            state.set_container(
                Container {
                    runtime: runtime.clone(),
                    id: id.to_string(),
                },
                pid,
            );
            tracing::info!(id, pid, "container started; its program is loading");
            // Running (ready, for status, health and sd_notify) once the
            // program is, not when `start` returns.
            let running = {
                let (state, id) = (state.clone(), id.to_string());
                tokio::spawn(async move {
                    if signals::program_started(pid).await
                        && state.advance(Phase::Start, Phase::Running)
                    {
                        tracing::info!(id, pid, "workspace running");
                        // The pull's buffers are free by now.
                        crate::memory::give_back_freed();
                    }
                })
            };
            let _running = AbortOnDrop(running);
            // From here on `died` below watches the daemons; one that died
            // during create or start is reported now.
            if let Err(death) = daemons.check() {
                end_now(&runtime, id).await;
                return Err(death.into());
            }
            if let Some(script) = settings.supervise.bootstrap_script.clone() {
                let (runtime, id) = (runtime.clone(), id.to_string());
                tokio::spawn(async move { launch::bootstrap::run(&runtime, &id, &script).await });
            }
            let supervised = signals::supervise(
                &runtime,
                id,
                pid,
                exit,
                StopPolicy {
                    stop_signal: info.stop_signal,
                    grace: settings.supervise.stop_timeout,
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
        if let Err(e) = &outcome.deleted {
            tracing::warn!(error = %e, "the runtime could not delete the workspace container");
        }
        tracing::info!(exit = %outcome.exit, code = outcome.code, "workspace ended");
        // A stop cvmd asked for is never undone by the init's reboot.
        let own_end = state.phase() != Phase::Stopping;
        state.set_exited(outcome.code);
        if oom.killed_init(outcome.exit, own_end) {
            let kills = state.snapshot().oom_kills;
            let message = oom::init_killed_message(kills, info.memory_limit);
            tracing::error!("{message}");
            crate::supervisor::termination::write_termination_log(
                &settings.supervise.termination_log,
                &message,
            );
            daemons.stop().await;
            return Ok(outcome.code);
        }
        if state.take_restart() {
            if let Some(signal) = signals::drain_before_restart(signals) {
                tracing::info!(
                    signal,
                    "a stop request arrived with the restart: not restarting"
                );
                daemons.stop().await;
                return Ok(outcome.code);
            }
            tracing::info!("restarting the workspace");
            continue;
        }
        if own_end && reboot::is_reboot(outcome.exit, info.init) {
            match reboots.on_reboot(booted.elapsed()) {
                reboot::Decision::Reboot { n } => {
                    tracing::info!(
                        reboot = n,
                        "the workspace rebooted itself; booting it again in place"
                    );
                    state.rebooted(n);
                    continue;
                }
                reboot::Decision::Loop(e) => {
                    daemons.stop().await;
                    return Err(e.into());
                }
                reboot::Decision::Exit => {}
            }
        }
        daemons.stop().await;
        return Ok(outcome.code);
    }
}

/// The OCI bundle for this boot, from the image config and the settings.
fn write_bundle(
    settings: &RunOptions,
    image: &crate::backend::ReadyImage,
    ws_dir: &Path,
    rootfs_dir: &Path,
    idmap: Option<rootfs::IdMap>,
    bundle_dir: &Path,
) -> anyhow::Result<bundle::BundleInfo> {
    let flavor = RuntimeFlavor::of_runtime(&settings.runtime.name);
    let wanted = &settings.bundle;
    let hostname = wanted
        .hostname
        .clone()
        .unwrap_or_else(|| settings.identity.name.clone());
    let host_files = host_files(ws_dir, &hostname)?;
    let mut input = BundleInput::new(&image.reference, rootfs_dir, flavor);
    input.image_run = ImageRun::from_oci(&image.config);
    input.overrides = Overrides {
        command: wanted.command.clone(),
        user: wanted.user.clone(),
        working_dir: wanted.workdir.clone(),
        hostname: None,
    };
    input.hostname = hostname;
    input.env_passthrough = wanted.envs.clone();
    input.outer_env = std::env::vars().collect::<BTreeMap<_, _>>();
    input.idmap = idmap;
    input.host_files = host_files;
    input.mounts = user_mounts(wanted, &settings.disk, flavor, idmap, ws_dir, rootfs_dir)?;
    // The control socket stays in the outer container (docs/ARCHITECTURE.md).
    if let Some(m) = input
        .mounts
        .iter()
        .find(|m| crate::api::server::exposes(&m.source, &settings.api.socket))
    {
        anyhow::bail!(
            "CVMD_MOUNTS entry {} would put cvmd's control socket {} into the workspace: mount a narrower directory, or move the socket with CVMD_SOCKET",
            m.source.display(),
            settings.api.socket.display()
        );
    }
    input.tun = wanted.tun;
    input.fuse = wanted.fuse;
    if let Some(gpu) = &wanted.gpu {
        add_gpus(gpu, &mut input)?;
    }
    // runc cannot mknod in a user namespace: the workspace's own nodes.
    if let (RuntimeFlavor::Runc, Some(map)) = (flavor, idmap) {
        let devices = bundle::devices_of(&input);
        if !devices.is_empty() {
            let dir = ws_dir.join("devices");
            launch::devices::stage(&devices, &map, &dir)?;
            input.device_dir = Some(dir);
        }
    }
    input.limits = Limits {
        cpus: wanted.cpus,
        memory: wanted.memory,
    }
    .or(bundle::outer_limits());
    Ok(bundle::write_bundle(bundle_dir, &input)?)
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
    settings: &BundleOptions,
    disk: &crate::disk::DiskSettings,
    flavor: RuntimeFlavor,
    idmap: Option<rootfs::IdMap>,
    ws_dir: &Path,
    rootfs_dir: &Path,
) -> anyhow::Result<Vec<bundle::UserMount>> {
    // The persistent paths first: a user mount beneath one still shows.
    let mut mounts = crate::disk::persistent_mounts(disk, rootfs_dir, idmap.as_ref())?;
    if let Some(m) = &settings.mounts {
        mounts.extend(bundle::parse_mounts(m, flavor)?);
    }
    if mounts.is_empty() {
        return Ok(mounts);
    }
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
fn add_gpus(gpu: &GpuOptions, input: &mut BundleInput) -> anyhow::Result<()> {
    let lib_dir = gpu
        .lib_dir
        .clone()
        .unwrap_or_else(launch::gpu::default_lib_dir);
    let gpus = launch::gpu::discover(&gpu.dev_dir, &lib_dir)?;
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

/// The workspace's output into cvmd's log and the log book (`cvmctl logs`).
async fn log_lines(source: Source, pipe: tokio::net::unix::pipe::Receiver, book: Arc<LogBook>) {
    let stream = source.as_str();
    let mut reader = tokio::io::BufReader::new(pipe);
    while let Ok(Some(record)) = loglines::next_record(&mut reader, loglines::MAX_RECORD).await {
        let line = String::from_utf8_lossy(&record.bytes);
        // The target is what keeps the log book's tracing layer from
        // recording the line a second time as cvmd's own.
        if record.partial {
            tracing::info!(target: "workspace", stream, partial = true, "{line}");
        } else {
            tracing::info!(target: "workspace", stream, "{line}");
        }
        book.push(source, tracing::Level::INFO, &line);
    }
}

/// Aborts a task when its owner's scope ends, on every path out of it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
