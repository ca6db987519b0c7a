//! Building and loading shiftfs: `make -C HEADERS M=BUILD modules`, then
//! `insmod BUILD/shiftfs.ko` (or `modprobe shiftfs` when the node already
//! has it built). Shelled out on purpose: kbuild is the only supported way
//! to build an out-of-tree module, and insmod/modprobe are what the module
//! loader expects; each runs through the runtime's [`Spawner`] seam so
//! that under cvmd's reaper no exit status is lost, and tests record what
//! would run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{decide, message, Facts, Verdict};
use crate::runtime::Spawner;

#[derive(Debug, thiserror::Error)]
pub enum ShiftfsError {
    #[error("shiftfs is needed but cannot be installed: {detail}; {fix}")]
    Blocked { detail: String, fix: String },
    #[error("no shiftfs source at {path}: {why}; ship it in the outer image there (git clone https://github.com/toby63/shiftfs-dkms) or set CVMD_SHIFTFS_SRC")]
    NoSource { path: PathBuf, why: String },
    #[error("cannot copy the shiftfs source from {from} to {to}: {source}; the source must be readable and CVMD_STATE_DIR writable")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("`{command}` failed ({exit}): {output}")]
    Command {
        command: String,
        exit: String,
        output: String,
    },
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    AlreadyLoaded,
    /// ID-mapped mounts serve: nothing was loaded.
    NotNeeded,
    Loaded,
}

/// The commands for a verdict, in order: program and arguments.
pub fn commands(verdict: &Verdict, build_dir: &Path) -> Vec<Vec<String>> {
    match verdict {
        Verdict::OnDisk(_) => vec![vec!["modprobe".into(), "shiftfs".into()]],
        Verdict::Installable { headers } => vec![
            vec![
                "make".into(),
                "-C".into(),
                headers.display().to_string(),
                format!("M={}", build_dir.display()),
                "modules".into(),
            ],
            vec![
                "insmod".into(),
                build_dir.join("shiftfs.ko").display().to_string(),
            ],
        ],
        Verdict::Loaded | Verdict::NotNeeded | Verdict::Blocked { .. } => Vec::new(),
    }
}

/// Copies the source's regular files into `build_dir` (made afresh): kbuild
/// writes its objects next to the source, and the image's copy stays clean
/// and may be read-only.
fn stage_source(src: &Path, build_dir: &Path) -> Result<(), ShiftfsError> {
    let no_source = |why: String| ShiftfsError::NoSource {
        path: src.to_owned(),
        why,
    };
    if !src.join("shiftfs.c").is_file() {
        return Err(no_source("shiftfs.c is missing".into()));
    }
    if !src.join("Makefile").is_file() && !src.join("Kbuild").is_file() {
        return Err(no_source("neither Makefile nor Kbuild is there".into()));
    }
    let copy_err = |source| ShiftfsError::Copy {
        from: src.to_owned(),
        to: build_dir.to_owned(),
        source,
    };
    let _ = std::fs::remove_dir_all(build_dir);
    std::fs::create_dir_all(build_dir).map_err(copy_err)?;
    for entry in std::fs::read_dir(src).map_err(copy_err)? {
        let entry = entry.map_err(copy_err)?;
        if entry.file_type().map_err(copy_err)?.is_file() {
            std::fs::copy(entry.path(), build_dir.join(entry.file_name())).map_err(copy_err)?;
        }
    }
    Ok(())
}

/// Installs shiftfs if `facts` say it is needed and allowed; never when
/// ID-mapped mounts serve.
pub async fn install(
    spawner: &dyn Spawner,
    facts: &Facts,
    src: &Path,
    build_dir: &Path,
) -> Result<Outcome, ShiftfsError> {
    let verdict = decide(facts);
    match &verdict {
        Verdict::Loaded => return Ok(Outcome::AlreadyLoaded),
        Verdict::NotNeeded => return Ok(Outcome::NotNeeded),
        Verdict::Blocked { .. } => {
            let (detail, fix) = message(facts, &verdict);
            return Err(ShiftfsError::Blocked {
                detail,
                fix: fix.unwrap_or_default(),
            });
        }
        Verdict::Installable { .. } => stage_source(src, build_dir)?,
        Verdict::OnDisk(_) => {}
    }
    for argv in commands(&verdict, build_dir) {
        run(spawner, &argv).await?;
    }
    Ok(Outcome::Loaded)
}

async fn run(spawner: &dyn Spawner, argv: &[String]) -> Result<(), ShiftfsError> {
    let text = argv.join(" ");
    tracing::info!(command = %text, "shiftfs");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawned = spawner.spawn(cmd).map_err(|e| ShiftfsError::Spawn {
        program: argv[0].clone(),
        reason: e.to_string(),
    })?;
    let stderr = spawned.stderr.map(|mut pipe| {
        tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    });
    let exit = spawned.exit.await.map_err(|e| ShiftfsError::Spawn {
        program: argv[0].clone(),
        reason: e.to_string(),
    })?;
    let output = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    if exit.success() {
        return Ok(());
    }
    // The last lines say what went wrong (kbuild prints the failing
    // compiler error last); one line for the message.
    let tail: Vec<&str> = output.lines().rev().take(3).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(ShiftfsError::Command {
        command: text,
        exit: exit.to_string(),
        output: if tail.is_empty() {
            "no output".into()
        } else {
            tail.join(" | ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shiftfs::SecureBoot;
    use crate::supervisor::reaper::{Exit, ExitWaiter, ReaperError, Spawned};
    use std::sync::Mutex;

    /// Records each command and exits it with the next code given.
    struct Recorder {
        ran: Mutex<Vec<Vec<String>>>,
        codes: Mutex<Vec<i32>>,
    }

    impl Recorder {
        fn new(codes: &[i32]) -> Recorder {
            Recorder {
                ran: Mutex::default(),
                codes: Mutex::new(codes.iter().rev().copied().collect()),
            }
        }
    }

    impl Spawner for Recorder {
        fn spawn(&self, cmd: Command) -> Result<Spawned, ReaperError> {
            let mut argv = vec![cmd.get_program().to_string_lossy().into_owned()];
            argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
            self.ran.lock().unwrap().push(argv);
            let (tx, exit) = ExitWaiter::channel(1);
            let code = self.codes.lock().unwrap().pop().unwrap_or(0);
            let _ = tx.send(Exit::code(code));
            Ok(Spawned {
                pid: 1,
                stdin: None,
                stdout: None,
                stderr: None,
                exit,
            })
        }

        fn watch(&self, pid: i32) -> Result<ExitWaiter, ReaperError> {
            // The install never adopts a process it did not spawn.
            Err(ReaperError::NotAChild { pid, me: 0 })
        }
    }

    fn facts(headers: &Path) -> Facts {
        Facts {
            release: "5.10.0-28-amd64".into(),
            loaded: false,
            module: None,
            secure_boot: SecureBoot::Off,
            headers: Some(headers.to_owned()),
            idmapped_serves: false,
        }
    }

    fn source() -> tempfile::TempDir {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("shiftfs.c"), "/* module */").unwrap();
        std::fs::write(src.path().join("Makefile"), "obj-m := shiftfs.o\n").unwrap();
        src
    }

    #[tokio::test]
    async fn builds_then_loads_exactly_these_commands() {
        let src = source();
        let state = tempfile::tempdir().unwrap();
        let build = state.path().join("build");
        let rec = Recorder::new(&[0, 0]);
        let headers = Path::new("/lib/modules/5.10.0-28-amd64/build");
        let out = install(&rec, &facts(headers), src.path(), &build)
            .await
            .unwrap();
        assert_eq!(out, Outcome::Loaded);
        let b = build.display();
        assert_eq!(
            *rec.ran.lock().unwrap(),
            vec![
                vec![
                    "make".to_string(),
                    "-C".into(),
                    "/lib/modules/5.10.0-28-amd64/build".into(),
                    format!("M={b}"),
                    "modules".into()
                ],
                vec!["insmod".to_string(), format!("{b}/shiftfs.ko")],
            ]
        );
        assert!(build.join("shiftfs.c").is_file(), "built in a copy");
    }

    #[tokio::test]
    async fn a_failed_build_loads_nothing() {
        let src = source();
        let state = tempfile::tempdir().unwrap();
        let rec = Recorder::new(&[2]);
        let e = install(
            &rec,
            &facts(Path::new("/h")),
            src.path(),
            &state.path().join("b"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().starts_with("`make -C /h"), "{e}");
        assert_eq!(
            rec.ran.lock().unwrap().len(),
            1,
            "no insmod after a failed make"
        );
    }

    #[tokio::test]
    async fn nothing_runs_when_idmapped_mounts_serve_or_it_is_blocked() {
        let src = source();
        let state = tempfile::tempdir().unwrap();
        let rec = Recorder::new(&[]);
        let serves = Facts {
            idmapped_serves: true,
            ..facts(Path::new("/h"))
        };
        let out = install(&rec, &serves, src.path(), state.path())
            .await
            .unwrap();
        assert_eq!(out, Outcome::NotNeeded);
        let blocked = Facts {
            secure_boot: SecureBoot::On,
            ..facts(Path::new("/h"))
        };
        let e = install(&rec, &blocked, src.path(), state.path())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("secure boot is on"), "{e}");
        assert!(rec.ran.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_module_on_disk_is_modprobed_and_a_missing_source_is_named() {
        let rec = Recorder::new(&[0]);
        let on_disk = Facts {
            module: Some("/lib/modules/x/extra/shiftfs.ko".into()),
            ..facts(Path::new("/h"))
        };
        let state = tempfile::tempdir().unwrap();
        install(&rec, &on_disk, Path::new("/nonexistent"), state.path())
            .await
            .unwrap();
        assert_eq!(
            *rec.ran.lock().unwrap(),
            vec![vec!["modprobe".to_string(), "shiftfs".into()]]
        );
        let e = install(
            &rec,
            &facts(Path::new("/h")),
            Path::new("/nonexistent-src"),
            state.path(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("no shiftfs source at /nonexistent-src"),
            "{e}"
        );
    }
}
