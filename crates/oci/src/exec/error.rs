//! Errors of the exec engine: one variant per failure site, each saying what
//! failed, in which workspace, and what to do.

use std::io;
use std::path::PathBuf;

use crate::reaper::ReaperError;
use crate::runtime::RuntimeError;

/// `docker exec`'s codes: the command was not found, it could not be
/// invoked, and the engine itself failed.
pub const NOT_FOUND: i32 = 127;
pub const CANNOT_INVOKE: i32 = 126;
pub const ENGINE_FAILED: i32 = 125;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid exec request: {reason}")]
    BadRequest { reason: String },
    #[error("cannot ask the runtime about workspace {id}: {source}")]
    State {
        id: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error(
        "workspace {id} is {status}, not running; start it (or wait for it to boot) before exec"
    )]
    NotRunning { id: String, status: String },
    #[error("cannot read the bundle of workspace {id} ({path:?}): {reason}")]
    Bundle {
        id: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot run as user {value:?} in workspace {id}: {reason}")]
    User {
        id: String,
        value: String,
        reason: String,
    },
    #[error(
        "cannot prepare the exec in {path:?}: {source}; check that CVMD_STATE_DIR is writable"
    )]
    Scratch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on the console socket {path:?}: {source}; check that CVMD_STATE_DIR is writable")]
    ConsoleSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the runtime did not hand over the terminal of the exec in workspace {id}: {reason}; use a runtime with --console-socket (runc 1.1+, sysbox-runc 0.6+), or exec without a terminal")]
    Console { id: String, reason: String },
    /// The runtime could not start the command; `message` is its own
    /// reason (from its log), `code` what `docker exec` would exit with.
    #[error("cannot start {command:?} in workspace {id}: {message}")]
    Start {
        id: String,
        command: String,
        message: String,
        code: i32,
    },
    #[error("cannot exec in workspace {id}: {source}")]
    Runtime {
        id: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("cannot follow the exec'd process {pid} in workspace {id}: {source}")]
    Watch {
        id: String,
        pid: i32,
        #[source]
        source: ReaperError,
    },
    #[error("lost the exit status of the exec'd process {pid}: {source}")]
    Wait {
        pid: i32,
        #[source]
        source: ReaperError,
    },
    #[error("this exec has no terminal to resize; ask for one (tty) when starting it")]
    NoTerminal,
    #[error("cannot resize the exec's terminal to {rows}x{cols}: {source}")]
    Resize {
        rows: u16,
        cols: u16,
        #[source]
        source: io::Error,
    },
}

impl ExecError {
    /// The exit code a CLI should end with, as `docker exec` does: 127 for
    /// a command not found, 126 for one that cannot be invoked, 125 when
    /// the exec could not even be tried.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Start { code, .. } => *code,
            _ => ENGINE_FAILED,
        }
    }
}

/// `docker exec`'s code for the runtime's reason a command did not start
/// (moby `translateContainerdStartErr`): not found is 127, permission
/// denied 126; any other reason the command could not be invoked is 126.
pub fn start_failure_code(message: &str) -> i32 {
    let m = message.to_ascii_lowercase();
    if m.contains("executable file not found") || m.contains("no such file or directory") {
        NOT_FOUND
    } else {
        CANNOT_INVOKE
    }
}

/// The runtime's reason without its own "exec failed: " wrapper.
pub fn runtime_reason(message: &str) -> &str {
    message.strip_prefix("exec failed: ").unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_exec_codes() {
        let not_found = r#"exec failed: unable to start container process: exec: "nope": executable file not found in $PATH"#;
        assert_eq!(start_failure_code(not_found), 127);
        let missing_path = r#"unable to start container process: exec: "/etc/x": stat /etc/x: no such file or directory"#;
        assert_eq!(start_failure_code(missing_path), 127);
        let denied = r#"unable to start container process: exec: "/bin": permission denied"#;
        assert_eq!(start_failure_code(denied), 126);
        assert_eq!(start_failure_code("something else broke"), 126);
        assert_eq!(
            runtime_reason(not_found),
            r#"unable to start container process: exec: "nope": executable file not found in $PATH"#
        );
        let e = ExecError::Start {
            id: "ws".into(),
            command: "nope".into(),
            message: "x".into(),
            code: 127,
        };
        assert_eq!(e.exit_code(), 127);
        assert_eq!(ExecError::NoTerminal.exit_code(), 125);
    }
}
