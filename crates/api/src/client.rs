//! Connecting to cvmd's socket, with a reason a person can act on when it
//! fails (no socket, no permission, nobody listening).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::pb::control_client::ControlClient;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no cvmd socket at {0}: is cvmd running? (give cvmctl the CVMD_SOCKET, CVMD_STATE_DIR or CVMD_CONFIG cvmd has, or --socket)")]
    Missing(PathBuf),
    #[error("permission denied on {0}: run cvmctl as root or as a member of cvmd's admin group")]
    Denied(PathBuf),
    #[error("nothing answers on {0}: cvmd is not running (a stale socket)")]
    Refused(PathBuf),
    #[error("cannot connect to {path}: {source}")]
    Other {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the connection to {path}: {source}")]
    Transport {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

fn classify(path: &Path, e: std::io::Error) -> ConnectError {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => ConnectError::Missing(path.into()),
        PermissionDenied => ConnectError::Denied(path.into()),
        ConnectionRefused => ConnectError::Refused(path.into()),
        _ => ConnectError::Other {
            path: path.into(),
            source: e,
        },
    }
}

/// A client on `path`. The first connection is made here, so its failure
/// is reported as what it is rather than as a transport error later.
pub async fn connect(path: &Path) -> Result<ControlClient<Channel>, ConnectError> {
    // No encoding limit here: cvmd judges what is too large.
    Ok(ControlClient::new(channel(path).await?).max_decoding_message_size(crate::MAX_RESPONSE))
}

/// A gRPC channel on `path`, for any of the socket's services (Control,
/// grpc.health.v1, reflection).
pub async fn channel(path: &Path) -> Result<Channel, ConnectError> {
    let first = UnixStream::connect(path)
        .await
        .map_err(|e| classify(path, e))?;
    let first = Arc::new(Mutex::new(Some(first)));
    let dial = path.to_path_buf();
    // The URI is required by the builder and unused: the connector dials
    // the unix socket.
    let channel = Endpoint::from_static("http://cvmd.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let first = first.lock().ok().and_then(|mut f| f.take());
            let dial = dial.clone();
            async move {
                let stream = match first {
                    Some(s) => s,
                    None => UnixStream::connect(&dial).await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| ConnectError::Transport {
            path: path.into(),
            source,
        })?;
    Ok(channel)
}
