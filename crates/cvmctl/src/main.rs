//! cvmctl: the operator's debug CLI for a running cvmd, over the control
//! API's unix socket. Thin: each subcommand is a module of `ctl`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ctl;

use ctl::{exec::ExecArgs, Exit};

#[derive(Parser)]
#[command(
    name = "cvmctl",
    version,
    about = "Inspect and steer the workspace cvmd supervises",
    after_help = ctl::EXIT_CODES_HELP
)]
struct Cli {
    /// cvmd's control socket [default: as cvmd places it: CVMD_SOCKET, the
    /// config file's (CVMD_CONFIG) socket, else cvmd.sock in CVMD_STATE_DIR
    /// or the file's state_dir, else /run/cvmd/cvmd.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Phase, timeline, image, rootfs, runtime, init pid, uptime, exit status.
    Status {
        /// JSON (the default when stdout is not a terminal; CVMCTL_FORMAT=human|json overrides).
        #[arg(long)]
        json: bool,
        /// Exit 0 only when the workspace runs, 4 otherwise (a readiness probe).
        #[arg(long)]
        ready: bool,
    },
    /// The current phase; with -f, every phase change and warning after it.
    Events {
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// The workspace's output and cvmd's own log.
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Lines of history to show first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        #[arg(long, default_value = "all", value_parser = ["workspace", "cvmd", "all"])]
        source: String,
    },
    /// Run a command inside the workspace; exits with its exit code.
    Exec {
        /// Pass stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (raw mode here, window size follows).
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        /// KEY=VALUE, repeatable.
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Stop the workspace (as SIGTERM to cvmd would); cvmd then exits.
    Stop,
    /// Stop the workspace's container and boot it again on the same rootfs.
    Restart,
    /// The image pull's per-layer progress while it runs.
    #[command(alias = "progress")]
    Pull,
    /// cvmd's metrics as OpenMetrics text (names in docs/operations.md).
    Metrics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cvmctl: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Error as u8);
        }
    };
    let flag = cli.socket.as_ref().and_then(|p| p.to_str());
    let socket = match cvmd_api::socket::control_socket(flag, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cvmctl: finding cvmd's socket: {e}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Status { json, ready } => ctl::status::status(&socket, json, ready)
                .await
                .map(|e| e as i32),
            Command::Events { follow, json } => ctl::status::events(&socket, follow, json)
                .await
                .map(|e| e as i32),
            Command::Logs {
                follow,
                tail,
                source,
            } => ctl::logs::logs(&socket, follow, tail, &source)
                .await
                .map(|e| e as i32),
            Command::Exec {
                interactive,
                tty,
                user,
                workdir,
                env,
                command,
            } => {
                let args = ExecArgs {
                    interactive,
                    tty,
                    user,
                    workdir,
                    env,
                    command,
                };
                ctl::exec::exec(&socket, &args).await
            }
            Command::Stop => ctl::status::stop(&socket).await.map(|e| e as i32),
            Command::Restart => ctl::status::restart(&socket).await.map(|e| e as i32),
            Command::Pull => ctl::pull::pull(&socket).await.map(|e| e as i32),
            Command::Metrics => ctl::metrics::metrics(&socket).await.map(|e| e as i32),
        }
    });
    // A blocked stdin reader must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(f) => {
            eprintln!("cvmctl: {}", f.message);
            ExitCode::from(f.exit as u8)
        }
    }
}
