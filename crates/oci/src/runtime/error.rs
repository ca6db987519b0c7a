//! Errors of the runtime driver, and the runtime's own reason for a failure
//! read from its JSON log (`--log FILE --log-format json`): runc and
//! sysbox-runc write one logrus object per line, the reason in the last line
//! whose level is `error` (or `fatal`).

use std::io;
use std::path::PathBuf;

use crate::reaper::{Exit, ReaperError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot run the OCI runtime {binary:?} ({verb}): {source}; \
         set CVMD_RUNTIME to the path of sysbox-runc (or runc)"
    )]
    Spawn {
        binary: PathBuf,
        verb: &'static str,
        #[source]
        source: ReaperError,
    },
    #[error("{runtime} {verb} {id} failed: {message}")]
    Failed {
        runtime: String,
        verb: &'static str,
        id: String,
        exit: Exit,
        message: String,
    },
    #[error(
        "{runtime} {verb} {id} did not finish within {after:?} and was killed; \
         the runtime may be stuck (check its daemons and mounts), or raise CVMD_RUNTIME_TIMEOUT"
    )]
    Timeout {
        runtime: String,
        verb: &'static str,
        id: String,
        after: std::time::Duration,
    },
    #[error("cannot prepare the runtime log {path:?}: {source}; check CVMD_STATE_DIR")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the output pipes of container {id}: {source}")]
    Pipe {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("{runtime} {verb} {id} succeeded but its pid file {path:?} is unusable: {reason}")]
    PidFile {
        runtime: String,
        verb: &'static str,
        id: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{runtime} state {id} printed JSON cvmd cannot read: {source}")]
    State {
        runtime: String,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("lost track of {runtime} {verb} {id}: {source}")]
    Wait {
        runtime: String,
        verb: &'static str,
        id: String,
        #[source]
        source: ReaperError,
    },
    #[error("cannot read the output of {runtime} {verb} {id}: {source}")]
    Output {
        runtime: String,
        verb: &'static str,
        id: String,
        #[source]
        source: io::Error,
    },
}

/// The message of the last `error`/`fatal` line of a JSON log, if any.
pub fn error_from_log(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let level = v.get("level")?.as_str()?;
        if level != "error" && level != "fatal" {
            return None;
        }
        let msg = v.get("msg")?.as_str()?.trim();
        (!msg.is_empty()).then(|| msg.to_string())
    })
}

/// The reason to show for a failed call: the log's, else the tail of
/// stderr, else the bare exit status.
pub fn failure_message(log: &str, stderr: &[u8], exit: Exit) -> String {
    if let Some(msg) = error_from_log(log) {
        return msg;
    }
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return format!("{exit}, with no message in its log or on stderr");
    }
    let tail = lines[lines.len().saturating_sub(3)..].join("; ");
    // A runaway stderr must not become a runaway error message.
    const MAX: usize = 2000;
    if tail.len() > MAX {
        let mut cut = tail.len() - MAX;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        format!("...{}", &tail[cut..])
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_line_wins() {
        let log = r#"{"level":"info","msg":"starting","time":"t"}
{"level":"error","msg":"first","time":"t"}
not json at all
{"level":"warning","msg":"later warning","time":"t"}
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH","time":"t"}
{"level":"info","msg":"after","time":"t"}
"#;
        assert_eq!(
            error_from_log(log).as_deref(),
            Some(
                "container_linux.go:380: starting container process caused: exec: \"nope\": \
                 executable file not found in $PATH"
            )
        );
        assert_eq!(
            error_from_log(r#"{"level":"fatal","msg":"boom"}"#).as_deref(),
            Some("boom")
        );
        assert_eq!(error_from_log("{\"level\":\"info\",\"msg\":\"x\"}\n"), None);
        assert_eq!(error_from_log(""), None);
    }

    #[test]
    fn falls_back_to_stderr_then_status() {
        assert_eq!(
            failure_message("", b"\nline one\nline two\n\n", Exit::code(1)),
            "line one; line two"
        );
        assert_eq!(
            failure_message("", b"", Exit::signal(9)),
            "killed by signal 9, with no message in its log or on stderr"
        );
        let long = "é".repeat(3000);
        let msg = failure_message("", long.as_bytes(), Exit::code(1));
        assert!(msg.starts_with("...") && msg.len() <= 2004);
    }
}
