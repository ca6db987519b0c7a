//! `cvmd shiftfs status|install`: whether this node needs shiftfs, and
//! building and loading it from the source the outer image ships.

use crate::config::Settings;
use crate::preflight::{self, RealHost, Status};
use crate::runtime::{DirectSpawner, Spawner};
use crate::shiftfs::{self, install::Outcome};

#[derive(Debug, clap::Args)]
pub struct ShiftfsArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Say whether shiftfs is needed, present, and installable here.
    Status,
    /// Build and load shiftfs when it is needed and allowed (never when
    /// ID-mapped mounts serve).
    Install,
}

/// The node's shiftfs facts, with ID-mapped mounts probed in the cache dir.
pub async fn facts(settings: &Settings) -> anyhow::Result<shiftfs::Facts> {
    let opts = settings.run.preflight.clone();
    Ok(tokio::task::spawn_blocking(move || {
        let host = RealHost::default();
        let report = preflight::collect(&host, &opts);
        let works = |name: &str| {
            report
                .checks
                .iter()
                .any(|c| c.name == name && c.status == Status::Ok)
        };
        let serves = works("idmapped-mounts") && works("overlay-idmapped");
        preflight::shiftfs_facts(&host, serves)
    })
    .await?)
}

/// Installs if needed; `spawner` is the reaper under `cvmd run`.
pub async fn install(settings: &Settings, spawner: &dyn Spawner) -> anyhow::Result<Outcome> {
    let facts = facts(settings).await?;
    let options = &settings.run.shiftfs;
    let build = options.build_root.join(&facts.release);
    let outcome = shiftfs::install::install(spawner, &facts, &options.src, &build).await?;
    match outcome {
        Outcome::AlreadyLoaded => tracing::info!("shiftfs is already loaded"),
        Outcome::NotNeeded => {
            tracing::info!("shiftfs not needed: ID-mapped mounts serve; nothing loaded")
        }
        Outcome::Loaded => tracing::info!("shiftfs loaded"),
    }
    Ok(outcome)
}

pub async fn shiftfs(settings: &Settings, args: &ShiftfsArgs) -> anyhow::Result<()> {
    match args.action {
        Action::Status => {
            let facts = facts(settings).await?;
            let (detail, fix) = shiftfs::message(&facts, &shiftfs::decide(&facts));
            println!("shiftfs: {detail}");
            if let Some(fix) = fix {
                println!("fix: {fix}");
            }
        }
        Action::Install => {
            let text = match install(settings, &DirectSpawner).await? {
                Outcome::AlreadyLoaded => "shiftfs is already loaded",
                Outcome::NotNeeded => {
                    "shiftfs is not needed: ID-mapped mounts serve here; nothing was loaded"
                }
                Outcome::Loaded => "shiftfs built and loaded",
            };
            println!("{text}");
        }
    }
    Ok(())
}
