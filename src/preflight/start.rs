//! Preflight at the start of `cvmd run`: log every finding, install shiftfs
//! when asked to and needed, and stop on a hard failure with each failing
//! check's fix.

use super::{collect, Options, PreflightError, RealHost, Report, Status};
use crate::backend::BackendOptions;
use crate::runtime::DirectSpawner;

pub async fn at_start(
    opts: &Options,
    backend: &BackendOptions,
    shiftfs: &crate::shiftfs::Options,
    disk: &crate::disk::DiskSettings,
    state_dir: &std::path::Path,
) -> Result<Report, PreflightError> {
    let opts = opts.clone();
    let report = tokio::task::spawn_blocking(move || collect(&RealHost::default(), &opts))
        .await
        .map_err(|e| PreflightError::Internal {
            reason: e.to_string(),
        })?
        .with(super::containerd::judge(
            &super::containerd::facts(backend).await,
        ))
        .with(crate::disk::size_check(disk, state_dir));
    report.log();
    if shiftfs.install_at_start {
        install_shiftfs(shiftfs, &report).await;
    }
    match report.clone().into_error() {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Opt-in (CVMD_SHIFTFS_INSTALL): a failed install is logged, not fatal:
/// Sysbox still runs without shiftfs, by chowning each rootfs.
async fn install_shiftfs(shiftfs: &crate::shiftfs::Options, report: &Report) {
    let works = |name: &str| {
        report
            .checks
            .iter()
            .any(|c| c.name == name && c.status == Status::Ok)
    };
    let serves = works("idmapped-mounts") && works("overlay-idmapped");
    let facts = super::shiftfs::facts(&RealHost::default(), serves);
    let build = shiftfs.build_root.join(&facts.release);
    // The reaper is not running yet at this point of `cvmd run`: a
    // direct waiter per child is safe.
    match crate::shiftfs::install::install(&DirectSpawner, &facts, &shiftfs.src, &build).await {
        Ok(outcome) => tracing::info!(?outcome, "shiftfs"),
        Err(e) => {
            tracing::error!(error = %e, "shiftfs install failed; Sysbox will chown each rootfs instead")
        }
    }
}
