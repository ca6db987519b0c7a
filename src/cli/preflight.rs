//! `cvmd preflight [--json]`: the host checklist; exit 1 when a hard
//! requirement of the chosen runtime fails.

use std::io::IsTerminal;

use crate::config::Settings;
use crate::preflight::{self, RealHost, Symbols};

#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs every check (blocking probes and `--version` calls) off the async
/// threads.
pub async fn report(settings: &Settings) -> anyhow::Result<preflight::Report> {
    let opts = settings.run.preflight.clone();
    let host = tokio::task::spawn_blocking(move || preflight::collect(&RealHost::default(), &opts))
        .await?;
    let containerd = preflight::containerd::facts(&settings.run.backend).await;
    Ok(host
        .with(preflight::containerd::judge(&containerd))
        .with(crate::disk::size_check(
            &settings.run.disk,
            &settings.run.state_dir,
        )))
}

pub async fn preflight(settings: &Settings, args: &PreflightArgs) -> anyhow::Result<i32> {
    let report = report(settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let symbols = if std::io::stdout().is_terminal() {
            Symbols::Unicode
        } else {
            Symbols::Ascii
        };
        print!("{}", preflight::render(&report, symbols));
    }
    Ok(if report.passed { 0 } else { 1 })
}
