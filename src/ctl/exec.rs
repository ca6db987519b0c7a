//! `cvmctl exec`: a command inside the workspace, its output here, its
//! exit code as cvmctl's.

use std::io::IsTerminal;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::tty::{window_size, RawMode};
use super::{connect, Exit, Failure};
use crate::api::pb;
use crate::api::pb::exec_request::Msg as In;
use crate::api::pb::exec_response::Msg as Out;

#[derive(Debug, Clone, Default)]
pub struct ExecArgs {
    pub interactive: bool,
    pub tty: bool,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub env: Vec<String>,
    pub command: Vec<String>,
}

fn msg(m: In) -> pb::ExecRequest {
    pb::ExecRequest { msg: Some(m) }
}

pub fn start_of(args: &ExecArgs, size: Option<(u32, u32)>) -> pb::ExecStart {
    pb::ExecStart {
        args: args.command.clone(),
        user: args.user.clone().unwrap_or_default(),
        env: args.env.clone(),
        cwd: args.workdir.clone().unwrap_or_default(),
        tty: args.tty,
        size: size.map(|(rows, cols)| pb::WindowSize { rows, cols }),
    }
}

/// Runs the command; Ok holds the exit code to leave with.
pub async fn exec(socket: &Path, args: &ExecArgs) -> Result<i32, Failure> {
    let mut client = connect(socket).await?;
    let size = if args.tty { window_size() } else { None };
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(msg(In::Start(start_of(args, size)))).await;
    let _raw = if args.tty && std::io::stdin().is_terminal() {
        Some(RawMode::enter().map_err(|e| {
            Failure::new(
                Exit::Error,
                format!("cannot put the terminal in raw mode: {e}"),
            )
        })?)
    } else {
        None
    };
    let mut responses = client.exec(ReceiverStream::new(rx)).await?.into_inner();
    if args.interactive {
        tokio::spawn(pump_stdin(tx.clone()));
    } else {
        let _ = tx.send(msg(In::CloseStdin(true))).await;
    }
    if args.tty {
        tokio::spawn(forward_resizes(tx.clone()));
    }
    drop(tx);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(r) = responses.message().await? {
        match r.msg {
            Some(Out::Stdout(b)) => {
                let _ = stdout.write_all(&b).await;
                let _ = stdout.flush().await;
            }
            Some(Out::Stderr(b)) => {
                let _ = stderr.write_all(&b).await;
                let _ = stderr.flush().await;
            }
            Some(Out::ExitCode(code)) => return Ok(code),
            None => {}
        }
    }
    Err(Failure::new(
        Exit::Error,
        "cvmd ended the exec without the command's exit code",
    ))
}

async fn pump_stdin(tx: mpsc::Sender<pb::ExecRequest>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(msg(In::Stdin(buf[..n].to_vec()))).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(msg(In::CloseStdin(true))).await;
}

async fn forward_resizes(tx: mpsc::Sender<pb::ExecRequest>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((rows, cols)) = window_size() {
            let resize = msg(In::Resize(pb::WindowSize { rows, cols }));
            if tx.send(resize).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_carries_every_option() {
        let args = ExecArgs {
            interactive: true,
            tty: true,
            user: Some("1000".into()),
            workdir: Some("/tmp".into()),
            env: vec!["A=1".into()],
            command: vec!["sh".into()],
        };
        let s = start_of(&args, Some((24, 80)));
        assert_eq!(s.args, ["sh"]);
        assert_eq!(s.user, "1000");
        assert_eq!(s.cwd, "/tmp");
        assert!(s.tty);
        assert_eq!(s.size.unwrap().cols, 80);
        let plain = start_of(
            &ExecArgs {
                command: vec!["true".into()],
                ..Default::default()
            },
            None,
        );
        assert_eq!(plain.user, "");
        assert!(plain.size.is_none());
    }
}
