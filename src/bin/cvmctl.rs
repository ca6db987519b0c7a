//! cvmctl: the operator's debug CLI for a running cvmd. The control API it
//! speaks arrives with the cvmctl work; until then it reports its version.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cvmctl",
    version,
    about = "Inspect and steer the workspace cvmd supervises"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!("cvmctl {}", env!("CARGO_PKG_VERSION"));
}
