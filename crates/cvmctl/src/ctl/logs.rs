//! `cvmctl logs`: the workspace's output and cvmd's log, tail and follow.

use std::io::Write;
use std::path::Path;

use super::{connect, Exit, Failure};
use cvmd_api::pb;

pub async fn logs(socket: &Path, follow: bool, tail: u32, source: &str) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    let mut stream = client
        .logs(pb::LogsRequest {
            source: source.into(),
            tail,
            follow,
        })
        .await?
        .into_inner();
    let all = source == "all";
    while let Some(l) = stream.message().await? {
        let mut out = std::io::stdout().lock();
        // With every source mixed, say whose line it is.
        let _ = if all {
            writeln!(out, "[{}] {}", l.source, l.line)
        } else {
            writeln!(out, "{}", l.line)
        };
        let _ = out.flush();
    }
    Ok(Exit::Ok)
}
