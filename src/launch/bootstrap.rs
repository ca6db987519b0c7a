//! The bootstrap script (`CVMD_BOOTSTRAP_SCRIPT`, envbox's
//! `CODER_BOOTSTRAP_SCRIPT`): run once inside the started workspace through
//! `runtime exec`, as the workspace's process user, fed to `/bin/sh -s` on
//! stdin (so no file of it lands in the rootfs and no argv holds it: the
//! script envbox users pass carries the Coder agent's token, which must
//! not show in `ps` or the log; the script text is never logged). Its
//! output is logged line by line and its exit status at the end; a failure
//! is a warning, not the workspace's end, as with envbox (the workspace
//! stays usable and the user can rerun the script).

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::runtime::{ContainerIo, ExecSpec, Runtime, RuntimeError};
use crate::supervisor::reaper::Exit;

/// The shell that reads the script from stdin.
pub const SHELL: [&str; 2] = ["/bin/sh", "-s"];

/// How the script ended, as logged.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed(Exit),
}

/// What the log says about an exit; a plain decision.
pub fn verdict(exit: Exit) -> Verdict {
    if exit.success() {
        Verdict::Succeeded
    } else {
        Verdict::Failed(exit)
    }
}

/// Runs `script` in container `id` and logs it; never fails the workspace.
pub async fn run(runtime: &Runtime, id: &str, script: &str) {
    match run_inner(runtime, id, script).await {
        Ok(exit) => match verdict(exit) {
            Verdict::Succeeded => tracing::info!(id, "bootstrap script exited with code 0"),
            Verdict::Failed(exit) => {
                tracing::warn!(id, %exit, "bootstrap script failed: the workspace keeps running")
            }
        },
        Err(e) => {
            tracing::warn!(id, error = %e, "bootstrap script could not run: the workspace keeps running")
        }
    }
}

async fn run_inner(runtime: &Runtime, id: &str, script: &str) -> Result<Exit, RuntimeError> {
    let spec = ExecSpec::Args(SHELL.iter().map(|s| s.to_string()).collect());
    let mut exec = runtime
        .exec(id, &spec, false, ContainerIo::Pipes { stdin: true })
        .await?;
    let mut readers = Vec::new();
    for (stream, pipe) in [
        ("stdout", exec.io.stdout.take()),
        ("stderr", exec.io.stderr.take()),
    ] {
        if let Some(pipe) = pipe {
            readers.push(tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "bootstrap", stream, "{line}");
                }
            }));
        }
    }
    if let Some(mut stdin) = exec.io.stdin.take() {
        // A script ending without a newline would leave its last line
        // unread by some shells; a write error means the shell is gone,
        // which its exit status reports.
        let mut text = script.as_bytes().to_vec();
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        let _ = stdin.write_all(&text).await;
        drop(stdin);
    }
    let exit = exec.wait().await;
    // The output of the script's last lines is logged before its status.
    for r in readers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), r).await;
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Exit::code(0)), Verdict::Succeeded);
        assert_eq!(verdict(Exit::code(3)), Verdict::Failed(Exit::code(3)));
        assert_eq!(verdict(Exit::signal(9)), Verdict::Failed(Exit::signal(9)));
    }
}
