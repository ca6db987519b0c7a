//! cvmctl's subcommands, one module each; `main.rs` only parses
//! and dispatches. Exit codes are part of the interface (see [`Exit`]).

pub mod exec;
pub mod logs;
pub mod metrics;
pub mod pull;
pub mod status;

use std::io::IsTerminal;
use std::path::Path;

use cvmd_api::client::{self, ConnectError};
use cvmd_api::pb::control_client::ControlClient;
use tonic::transport::Channel;

/// What cvmctl exits with; scripts may rely on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The call failed (cvmd said why).
    Error = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// No socket, or nobody answers on it.
    CannotConnect = 3,
    /// `status --ready`: the workspace is not running.
    NotReady = 4,
    /// Not root and not in cvmd's admin group.
    PermissionDenied = 5,
}

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the call failed (the message says why)
  2  usage error
  3  cannot connect: no socket, or no cvmd answers on it
  4  status --ready: the workspace is not running
  5  permission denied: not root and not in cvmd's admin group
  exec exits with the command's own exit code.";

/// An error with the exit code it maps to; printed as one line.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Failure {
        let exit = match e {
            ConnectError::Denied(_) => Exit::PermissionDenied,
            _ => Exit::CannotConnect,
        };
        Failure::new(exit, e.to_string())
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure::new(exit_for(s.code()), status_line(&s))
    }
}

/// The exit code for a gRPC status code.
pub fn exit_for(code: tonic::Code) -> Exit {
    match code {
        tonic::Code::Ok => Exit::Ok,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Exit::PermissionDenied,
        tonic::Code::Unavailable => Exit::CannotConnect,
        _ => Exit::Error,
    }
}

fn status_line(s: &tonic::Status) -> String {
    let what = match s.code() {
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unavailable => "cvmd is unavailable",
        _ => "cvmd answered",
    };
    format!("{what}: {}", s.message()).replace(['\n', '\r'], " ")
}

pub async fn connect(socket: &Path) -> Result<ControlClient<Channel>, Failure> {
    Ok(client::connect(socket).await?)
}

/// JSON when asked, or when nobody reads the output at a terminal;
/// `CVMCTL_FORMAT=human|json` overrides the terminal guess (a person
/// reading a CI log, a script under `script(1)`).
pub fn wants_json(flag: bool) -> bool {
    choose_json(
        flag,
        std::env::var("CVMCTL_FORMAT").ok().as_deref(),
        std::io::stdout().is_terminal(),
    )
}

fn choose_json(flag: bool, format: Option<&str>, terminal: bool) -> bool {
    match format {
        _ if flag => true,
        Some("json") => true,
        Some("human") => false,
        _ => !terminal,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_by_flag_env_or_no_terminal() {
        use super::choose_json;
        assert!(choose_json(true, Some("human"), true));
        assert!(!choose_json(false, None, true));
        assert!(choose_json(false, None, false));
        assert!(!choose_json(false, Some("human"), false));
        assert!(choose_json(false, Some("json"), true));
    }

    use super::*;

    #[test]
    fn exit_codes_scripts_rely_on() {
        assert_eq!(exit_for(tonic::Code::PermissionDenied) as i32, 5);
        assert_eq!(exit_for(tonic::Code::Unavailable) as i32, 3);
        assert_eq!(exit_for(tonic::Code::InvalidArgument) as i32, 1);
        let f: Failure = ConnectError::Missing("/x".into()).into();
        assert_eq!(f.exit as i32, 3);
        let f: Failure = ConnectError::Denied("/x".into()).into();
        assert_eq!(f.exit as i32, 5);
        assert!(EXIT_CODES_HELP.contains("4  status --ready"));
    }

    #[test]
    fn status_lines_are_one_line() {
        let f: Failure = tonic::Status::permission_denied("uid 7\nis not root").into();
        assert_eq!(f.message, "permission denied: uid 7 is not root");
    }
}
