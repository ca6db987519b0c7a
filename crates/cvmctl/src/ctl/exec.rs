//! `cvmctl exec`: a command inside the workspace, its output here, its
//! exit code as cvmctl's.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{connect, Exit, Failure};
use cvmd_api::pb;
use cvmd_api::pb::exec_request::Msg as In;
use cvmd_api::pb::exec_response::Msg as Out;
use cvmd_api::terminal::{self, RawMode, WindowChanges};

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

pub fn start_of(args: &ExecArgs, size: Option<(u16, u16)>) -> pb::ExecStart {
    pb::ExecStart {
        args: args.command.clone(),
        user: args.user.clone().unwrap_or_default(),
        env: args.env.clone(),
        cwd: args.workdir.clone().unwrap_or_default(),
        tty: args.tty,
        size: size.map(|(rows, cols)| pb::WindowSize {
            rows: rows.into(),
            cols: cols.into(),
        }),
    }
}

/// Runs the command; Ok holds the exit code to leave with.
pub async fn exec(socket: &Path, args: &ExecArgs) -> Result<i32, Failure> {
    let mut client = connect(socket).await?;
    let size = if args.tty {
        terminal::window_size(std::io::stdout())
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(msg(In::Start(start_of(args, size)))).await;
    // Restored when dropped, on every return of this function: before
    // main exits with the command's code.
    let _raw = if args.tty && terminal::is_terminal(std::io::stdin()) {
        Some(
            RawMode::enable(std::io::stdin())
                .map_err(|e| Failure::new(Exit::Error, e.to_string()))?,
        )
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
    let Ok(mut changes) = WindowChanges::new(std::io::stdout()) else {
        return;
    };
    while let Some((rows, cols)) = changes.next().await {
        let resize = msg(In::Resize(pb::WindowSize {
            rows: rows.into(),
            cols: cols.into(),
        }));
        if tx.send(resize).await.is_err() {
            return;
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
