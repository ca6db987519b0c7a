//! NAT and forwarding rules through the `iptables` command, and the sysctls
//! forwarding needs.
//!
//! Shelling out, because no well-kept Rust crate speaks nf_tables netlink
//! (the `iptables` crate shells out too), and `iptables` is what the outer
//! image has (Debian's iptables-nft), coexisting with rules other tools
//! there (Docker, kube-proxy) made the same way. Every child goes through
//! the process's [`Spawner`] (the reaper, in `cvmd run`).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;

use super::plan::{deletions, Plan, Table};
use super::NetError;
use crate::runtime::Spawner;

const IPTABLES: &str = "iptables";

/// Runs `iptables ARGS`; its stdout.
pub async fn iptables(spawner: &dyn Spawner, args: &[String]) -> Result<String, NetError> {
    let mut cmd = Command::new(IPTABLES);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = spawner.spawn(cmd).map_err(|e| match e {
        crate::supervisor::reaper::ReaperError::Spawn { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            NetError::IptablesMissing
        }
        other => NetError::Iptables {
            args: args.join(" "),
            reason: other.to_string(),
        },
    })?;
    let (out, err, exit) = tokio::join!(
        read_all(spawned.stdout.map(OwnedFd::from)),
        read_all(spawned.stderr.map(OwnedFd::from)),
        spawned.exit
    );
    let fail = |reason: String| NetError::Iptables {
        args: args.join(" "),
        reason,
    };
    let exit = exit.map_err(|e| fail(e.to_string()))?;
    if !exit.success() {
        let err = err.unwrap_or_default();
        let msg = String::from_utf8_lossy(&err);
        let msg = msg.trim();
        let hint = if msg.contains("Permission denied") || msg.contains("Operation not permitted") {
            ": the outer container must be privileged (CAP_NET_ADMIN)"
        } else {
            ""
        };
        return Err(fail(format!("{msg} (exit {}){hint}", exit.as_shell_code())));
    }
    out.map(|o| String::from_utf8_lossy(&o).into_owned())
        .map_err(|e| fail(e.to_string()))
}

async fn read_all(fd: Option<OwnedFd>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?
            .read_to_end(&mut buf)
            .await?;
    }
    Ok(buf)
}

/// Adds the plan's rules in order.
pub async fn add_rules(spawner: &dyn Spawner, plan: &Plan) -> Result<(), NetError> {
    for rule in plan.rules() {
        iptables(spawner, &rule.add_args()).await?;
    }
    Ok(())
}

/// Deletes every rule tagged with this workspace, whatever run added it.
/// Returns how many went.
pub async fn delete_rules(spawner: &dyn Spawner, plan: &Plan) -> Result<usize, NetError> {
    let tag = plan.tag();
    let mut deleted = 0;
    for table in Table::ALL {
        let listing = iptables(
            spawner,
            &["-w", "-t", table.as_str(), "-S"].map(String::from),
        )
        .await?;
        for args in deletions(table, &listing, &tag) {
            iptables(spawner, &args).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Writes `1` to a sysctl of the outer netns (`/proc/sys/net` shows the
/// netns of the thread that opens it: a runtime worker, in cvmd's).
pub fn enable(path: &Path) -> Result<(), NetError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| NetError::Sysctl {
        path: path.to_path_buf(),
        source,
    })
}
