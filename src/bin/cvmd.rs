//! cvmd: the workspace supervisor. Thin: each subcommand is a module of
//! `cvmd::cli`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cvmd::cli;
use cvmd::config::{self, Settings};

#[derive(Parser)]
#[command(name = "cvmd", version, about = "Supervisor of a container-based virtual machine workspace", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: image, rootfs, bundle, boot through the OCI runtime,
    /// supervise; exits with the workspace's status.
    Run,
    /// Pull IMAGE into the content store, with progress; prints the resolved digest.
    Pull(cli::pull::PullArgs),
    /// Assemble a workspace rootfs at DIR from the node cache, for inspection.
    Rootfs(cli::rootfs::RootfsArgs),
    /// Write an eStargz (or zstd:chunked) copy of IMAGE (lazily startable)
    /// and push it as TARGET.
    Convert(cli::convert::ConvertArgs),
    /// Pull images into the node cache ahead of the workspaces that use them.
    Prefetch(cli::prefetch::PrefetchArgs),
    /// Remove cached blobs and layers no image needs (never ones in use).
    Gc(cli::gc::GcArgs),
    /// Check this host for what a CVM needs; exits non-zero when a hard
    /// requirement of the chosen runtime fails.
    Preflight(cli::preflight::PreflightArgs),
    /// shiftfs for kernels where ID-mapped mounts do not serve.
    Shiftfs(cli::shiftfs::ShiftfsArgs),
}

fn main() -> ExitCode {
    cvmd::memory::tune_allocator();
    let matches = Cli::command().args(config::args()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let settings = match Settings::resolve(&matches, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            for line in &e.problems {
                eprintln!("cvmd: {line}");
            }
            return ExitCode::from(2);
        }
    };
    cli::logging::init(&settings);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cvmd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The workspace's exit code becomes cvmd's; other commands exit 0 on success.
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => cli::run::run(&settings).await,
            Command::Pull(args) => cli::pull::pull(&settings, &args).await.map(|()| 0),
            Command::Rootfs(args) => cli::rootfs::rootfs(&settings, &args).await.map(|()| 0),
            Command::Convert(args) => cli::convert::convert(&settings, &args).await.map(|()| 0),
            Command::Prefetch(args) => cli::prefetch::prefetch(&settings, &args).await.map(|()| 0),
            Command::Gc(args) => cli::gc::gc(&settings, &args).await.map(|()| 0),
            Command::Preflight(args) => cli::preflight::preflight(&settings, &args).await,
            Command::Shiftfs(args) => cli::shiftfs::shiftfs(&settings, &args).await.map(|()| 0),
        }
    });
    // Tasks still reading the workspace's pipes must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("cvmd: error: {}", cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
