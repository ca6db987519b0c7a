//! The Exec call: validate the start message, run the command through the
//! exec engine, pump stdin and resizes in and output out, end with the
//! exit code.

use std::pin::Pin;

use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::pb;
use super::pb::exec_request::Msg as In;
use super::pb::exec_response::Msg as Out;
use crate::exec as engine;
use crate::supervisor::state::StateHandle;

/// Output is sent in pieces of at most this size.
const CHUNK: usize = 32 << 10;
/// Bounds of a start message, beyond the transport's message size limit.
const MAX_ARGS: usize = 4096;

type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecResponse, Status>> + Send>>;

/// The engine's spec from a start message, or why it is refused.
pub fn spec_of(start: pb::ExecStart) -> Result<engine::ExecSpec, String> {
    if start.args.is_empty() || start.args[0].is_empty() {
        return Err("exec needs a command: args is empty".into());
    }
    if start.args.len() > MAX_ARGS || start.env.len() > MAX_ARGS {
        return Err(format!("at most {MAX_ARGS} args and env entries"));
    }
    let all = start
        .args
        .iter()
        .chain(&start.env)
        .chain([&start.user, &start.cwd]);
    if all.into_iter().any(|s| s.contains('\0')) {
        return Err("args, env, user and cwd must not contain NUL bytes".into());
    }
    if let Some(bad) = start
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return Err(format!(
            "env entry {:?} is not KEY=VALUE",
            bad.chars().take(64).collect::<String>()
        ));
    }
    if !start.cwd.is_empty() && !start.cwd.starts_with('/') {
        return Err(format!("cwd {:?} is not an absolute path", start.cwd));
    }
    let size = start.size.map(size_of).transpose()?;
    Ok(engine::ExecSpec {
        args: start.args,
        user: Some(start.user).filter(|u| !u.is_empty()),
        env: start.env,
        cwd: Some(start.cwd).filter(|c| !c.is_empty()),
        tty: start.tty,
        size,
    })
}

fn size_of(w: pb::WindowSize) -> Result<(u16, u16), String> {
    match (u16::try_from(w.rows), u16::try_from(w.cols)) {
        (Ok(r), Ok(c)) => Ok((r, c)),
        _ => Err(format!("window size {}x{} is out of range", w.rows, w.cols)),
    }
}

pub async fn exec(
    state: &StateHandle,
    mut requests: Streaming<pb::ExecRequest>,
) -> Result<tonic::Response<ExecStream>, Status> {
    let first = requests.message().await.map_err(|e| {
        Status::invalid_argument(format!("malformed Exec request: {}", e.message()))
    })?;
    let start = match first {
        Some(pb::ExecRequest {
            msg: Some(In::Start(start)),
        }) => start,
        _ => {
            return Err(Status::invalid_argument(
                "the first Exec message must be `start`",
            ))
        }
    };
    let spec = spec_of(start).map_err(Status::invalid_argument)?;
    let container = state
        .container()
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    tracing::info!(args = ?spec.args, tty = spec.tty, "exec through the control API");
    let (tx, rx) = mpsc::channel(64);
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let metrics = state.metrics().clone();
    // The start and the session run in a task of their own: a client that
    // leaves while the runtime starts the process drops this call's future,
    // and a process started then must still be hung up, not run unseen.
    tokio::spawn(async move {
        let session = match engine::spawn(&container.runtime, &container.id, spec).await {
            Ok(session) => session,
            Err(e) => {
                let _ = started_tx.send(Err(Status::failed_precondition(e.to_string())));
                return;
            }
        };
        let _ = started_tx.send(Ok(()));
        // Counted from the start to the end of the session.
        let _counted = metrics.exec_started();
        serve_session(session, requests, tx).await;
    });
    started
        .await
        .map_err(|_| Status::internal("the exec task ended before the process started"))??;
    Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Pumps a started exec's streams until it ends, then sends its exit code;
/// hangs it up when the client leaves first.
async fn serve_session(
    mut session: engine::ExecSession,
    requests: Streaming<pb::ExecRequest>,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
) {
    let (resize_tx, mut resize_rx) = mpsc::channel::<(u16, u16)>(8);
    let stdin = session.stdin.take();
    tokio::spawn(pump_in(requests, stdin, resize_tx));
    let stdout = std::mem::replace(&mut session.stdout, Box::new(tokio::io::empty()));
    let out = tokio::spawn(pump_out(stdout, tx.clone(), Out::Stdout));
    let err = session
        .stderr
        .take()
        .map(|e| tokio::spawn(pump_out(e, tx.clone(), Out::Stderr)));
    // Resizes matter while the command runs; its output ending means it
    // is done (or detached its output), and then its status is next.
    let outputs = async {
        let _ = out.await;
        if let Some(err) = err {
            let _ = err.await;
        }
    };
    let mut outputs = std::pin::pin!(outputs);
    let mut client_gone = false;
    loop {
        tokio::select! {
            () = &mut outputs => break,
            // The response stream was dropped: the client disconnected
            // (Ctrl-C, a closed laptop), and nobody will read or wait.
            () = tx.closed() => {
                client_gone = true;
                break;
            }
            Some((rows, cols)) = resize_rx.recv() => {
                if let Err(e) = session.resize(rows, cols) {
                    tracing::debug!(error = %e, "exec resize");
                }
            }
        }
    }
    let pid = session.pid();
    let target = session.signaller();
    let mut exited = std::pin::pin!(session.wait());
    if !client_gone {
        // The output may end long before the process (it closed its
        // pipes): the client can still leave while it runs.
        tokio::select! {
            code = &mut exited => {
                let last = match code {
                    Ok(code) => Ok(pb::ExecResponse {
                        msg: Some(Out::ExitCode(code)),
                    }),
                    Err(e) => Err(Status::internal(e.to_string())),
                };
                let _ = tx.send(last).await;
                return;
            }
            () = tx.closed() => {}
        }
    }
    match target {
        Some(target) => {
            tracing::info!(pid, "exec client disconnected: hanging the process up");
            let (code, how) =
                engine::hangup::hang_up(&target, exited, engine::hangup::HANGUP_GRACE).await;
            tracing::info!(
                pid,
                ?how,
                code = code.ok(),
                "exec session ended after its client left"
            );
        }
        None => {
            tracing::warn!(
                pid,
                "exec client disconnected; the process cannot be signalled, waiting for it"
            );
            let _ = exited.await;
        }
    }
}

async fn pump_in(
    mut requests: Streaming<pb::ExecRequest>,
    mut stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    resize: mpsc::Sender<(u16, u16)>,
) {
    // A broken stream or a second start ends the input; the command's
    // stdin closes with it.
    while let Ok(Some(req)) = requests.message().await {
        match req.msg {
            Some(In::Stdin(bytes)) => {
                if let Some(w) = stdin.as_mut() {
                    if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                        stdin = None;
                    }
                }
            }
            Some(In::Resize(w)) => {
                if let Ok(size) = size_of(w) {
                    let _ = resize.send(size).await;
                }
            }
            Some(In::CloseStdin(true)) => stdin = None,
            Some(In::CloseStdin(false)) | None => {}
            Some(In::Start(_)) => break,
        }
    }
}

async fn pump_out(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    tx: mpsc::Sender<Result<pb::ExecResponse, Status>>,
    wrap: fn(Vec<u8>) -> Out,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let msg = pb::ExecResponse {
                    msg: Some(wrap(buf[..n].to_vec())),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(args: &[&str]) -> pb::ExecStart {
        pb::ExecStart {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_start_becomes_a_spec() {
        let mut s = start(&["sh", "-c", "true"]);
        s.env = vec!["A=1".into()];
        s.size = Some(pb::WindowSize { rows: 24, cols: 80 });
        let Ok(spec) = spec_of(s) else {
            panic!("refused")
        };
        assert_eq!(spec.args, ["sh", "-c", "true"]);
        assert_eq!(spec.user, None);
        assert_eq!(spec.size, Some((24, 80)));
    }

    /// The engine's spec need not be Debug, so no `unwrap_err`.
    fn refused(s: pb::ExecStart) -> String {
        match spec_of(s) {
            Err(why) => why,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn hostile_starts_are_refused_with_a_reason() {
        assert!(refused(start(&[])).contains("needs a command"));
        assert!(refused(start(&["a\0b"])).contains("NUL"));
        let mut s = start(&["sh"]);
        s.env = vec!["NOEQUALS".into()];
        assert!(refused(s).contains("KEY=VALUE"));
        let mut s = start(&["sh"]);
        s.cwd = "relative".into();
        assert!(refused(s).contains("absolute"));
        let mut s = start(&["sh"]);
        s.size = Some(pb::WindowSize {
            rows: 70000,
            cols: 1,
        });
        assert!(refused(s).contains("out of range"));
    }
}
