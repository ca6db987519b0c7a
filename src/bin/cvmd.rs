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

/// glibc's allocator, tuned for a long-lived daemon with many threads.
///
/// - Allocations of 8 MiB and more always come from their own mappings.
///   glibc otherwise raises its mmap threshold to the size of each large
///   block freed, and later large blocks then come from the heap, where
///   `calloc` must zero them page by page. Each lazy layer's FUSE session
///   (fuser) allocates a zeroed 16 MiB request buffer it barely touches:
///   from the heap that made a 6-layer lazy start peak at 127-148 MiB of
///   RSS. Below 8 MiB nothing changes: the pull's buffers (at most a 4 MiB
///   chunk) are what the dynamic threshold left on the heap before.
/// - One arena. glibc gives threads arenas of their own (up to 8 per
///   core), and memory freed in one is kept there: with a FUSE session
///   per layer, read workers, the runtime and the blocking pool, the same
///   6-layer lazy start peaked anywhere from 65 to 97 MiB, with one arena
///   at 55-58 MiB. A cold pull and unpack of that image took the same time
///   either way (A/B medians 0.97-1.11 of wall time, user time 0.96-1.01):
///   each thread's small blocks come from its own tcache without locking.
/// - Freed memory at the heap's top is given back to the kernel only past
///   16 MiB. Setting the mmap threshold also fixes the trim threshold at
///   glibc's 128 KiB, and a pull's network chunks (up to ~400 KiB each,
///   allocated and freed all along) then had their pages returned and
///   faulted in again, zeroed, for every chunk: 4-6% of an HTTPS pull's
///   CPU in `clear_page` and page faults, gone with the higher threshold
///   (perf). At most 16 MiB of freed heap stays resident between pulls.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
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
