//! A stand-in for the exec engine (`crate::exec`, built on another branch)
//! with the same signature, so the Exec call builds and works for pipes
//! now. exec engine: wired at merge — delete this file and point
//! `api::service` at `crate::exec`.
//!
//! It runs `runtime exec ID ARGS...` with pipes; a TTY, a user, a working
//! directory and extra environment need the engine and are refused.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::runtime::{ContainerIo, Runtime, RuntimeError};

pub struct ExecSpec {
    pub args: Vec<String>,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub tty: bool,
    pub size: Option<(u16, u16)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0} needs the exec engine, which this build does not have yet")]
    Unsupported(&'static str),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub struct ExecSession {
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    exec: crate::runtime::Exec,
}

impl ExecSession {
    pub fn resize(&self, _rows: u16, _cols: u16) -> Result<(), ExecError> {
        Err(ExecError::Unsupported("a window resize"))
    }

    pub async fn wait(self) -> Result<i32, ExecError> {
        Ok(self.exec.wait().await?.as_shell_code())
    }
}

pub async fn spawn(
    runtime: &Runtime,
    container_id: &str,
    spec: ExecSpec,
) -> Result<ExecSession, ExecError> {
    if spec.tty || spec.size.is_some() {
        return Err(ExecError::Unsupported("a TTY"));
    }
    if spec.user.is_some() || spec.cwd.is_some() || !spec.env.is_empty() {
        return Err(ExecError::Unsupported("--user, --workdir or --env"));
    }
    let mut exec = runtime
        .exec(
            container_id,
            &crate::runtime::ExecSpec::Args(spec.args),
            false,
            ContainerIo::Pipes { stdin: true },
        )
        .await?;
    let stdin = exec
        .io
        .stdin
        .take()
        .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
    let stdout: Box<dyn AsyncRead + Send + Unpin> = match exec.io.stdout.take() {
        Some(s) => Box::new(s),
        None => Box::new(tokio::io::empty()),
    };
    let stderr = exec
        .io
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>);
    Ok(ExecSession {
        stdin,
        stdout,
        stderr,
        exec,
    })
}
