//! `PROGRAM --version`, bounded in time, through the spawner seam the
//! runtime driver uses (so that under cvmd's reaper the child is reaped by
//! it, and never by a second waiter).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::runtime::Spawner;

/// The version line of `program --version` (see [`first_line`]), or why
/// there is none.
pub fn run_with(
    spawner: &dyn Spawner,
    program: &Path,
    timeout: Duration,
) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let spawned = spawner.spawn(cmd).map_err(|e| e.to_string())?;
    let Some(mut stdout) = spawned.stdout else {
        return Err("no stdout pipe".into());
    };
    // End of stdout is the answer's end: the exit status itself is left to
    // the spawner (the reaper, under PID 1), whose waiter is simply dropped.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.by_ref().take(64 * 1024).read_to_end(&mut out);
        let _ = tx.send(out);
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => first_line(&String::from_utf8_lossy(&out))
            .ok_or_else(|| "printed nothing for --version".to_string()),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(spawned.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!(
                "did not answer --version within {}s",
                timeout.as_secs()
            ))
        }
    }
}

/// sysbox-runc prints a multi-line block (`sysbox-runc\n\tedition: ...\n\t
/// version: 0.6.4`); the `version:` line wins, else the first line.
pub fn first_line(out: &str) -> Option<String> {
    let lines = || out.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find(|l| l.starts_with("version:"))
        .or_else(|| lines().next())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DirectSpawner;
    use std::os::unix::fs::PermissionsExt;

    fn run(program: &Path, timeout: Duration) -> Result<String, String> {
        run_with(&DirectSpawner, program, timeout)
    }

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn sysbox_style_version_block_gives_its_version_line() {
        let out = "sysbox-runc\n\tedition: \tCommunity Edition (CE)\n\tversion: \t0.6.4\n";
        assert_eq!(first_line(out).as_deref(), Some("version: \t0.6.4"));
        assert_eq!(
            first_line("runc version 1.1.5\ncommit: x\n").as_deref(),
            Some("runc version 1.1.5")
        );
        assert_eq!(first_line("\n  \n"), None);
    }

    #[test]
    fn a_real_program_answers_and_a_hung_one_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let ok = script(dir.path(), "ok", "echo \"tool $1 2.0\"");
        assert_eq!(
            run(&ok, Duration::from_secs(5)).unwrap(),
            "tool --version 2.0"
        );
        let hung = script(dir.path(), "hung", "exec sleep 30");
        let t = std::time::Instant::now();
        let e = run(&hung, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let e = run(&dir.path().join("missing"), Duration::from_secs(1)).unwrap_err();
        assert!(!e.is_empty());
    }
}
