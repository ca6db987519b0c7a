//! Serving the Control API on the unix socket: claim the path (a stale
//! socket is replaced, a live cvmd on it is not), restrict it to root or
//! the admin group, check every call's peer, bound every message. Beside
//! the Control service: `grpc.health.v1` (see `health`) and server
//! reflection (`grpc.reflection.v1`), under the same peer check.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::http;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use super::pb::control_server::ControlServer;
use super::peer::{self, Peer, Verdict};
use super::service::ControlService;
use crate::supervisor::state::StateHandle;

/// Requests are small (an exec's start, stdin pieces); tonic refuses a
/// larger one before any handler sees it (see [`out_of_range_is_invalid`]).
pub const MAX_REQUEST: usize = 256 << 10;
pub use cvmd_api::MAX_RESPONSE;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another cvmd already serves {path}: stop it, or give this one its own CVMD_SOCKET")]
    Busy { path: PathBuf },
    #[error("cannot create the socket's directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove the stale socket {path}: {source}")]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket: remove it or choose another CVMD_SOCKET")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot restrict {path} to root and the admin group: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CVMD_ADMIN_GROUP: {0}")]
    Group(String),
    #[error("cannot build the reflection service from the control API's descriptors: {0} (a build problem: please report it)")]
    Reflection(String),
}

/// What to do with a path before binding it, from what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Free,
    /// A socket nobody answers on: a crashed cvmd's.
    Stale,
    Busy,
    NotASocket,
}

/// Looks at `path`: connects to a socket there to tell a live server from
/// a stale file.
pub fn probe(path: &Path) -> Claim {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(_) => Claim::Free,
        Ok(m) if !m.file_type().is_socket() => Claim::NotASocket,
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Claim::Busy,
            Err(_) => Claim::Stale,
        },
    }
}

/// The serving task; dropping it stops serving and removes the socket.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How long [`Server::shutdown`] lets streams deliver their last messages
/// (the final phase to `cvmctl events -f`) before cvmd exits anyway.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting calls and gives the open ones up to [`DRAIN`] to
    /// end (a follower's stream never does on its own).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(DRAIN, &mut self.task).await;
    }
}

/// Starts serving `state` on `path`. `admin_group` (a name or gid) makes
/// the socket 0660 with that group; without it the socket is 0600.
pub fn serve(
    path: &Path,
    admin_group: Option<&str>,
    state: StateHandle,
) -> Result<Server, ApiError> {
    let admin_gid = admin_group
        .map(peer::resolve_group)
        .transpose()
        .map_err(ApiError::Group)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ApiError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match probe(path) {
        Claim::Free => {}
        Claim::Busy => return Err(ApiError::Busy { path: path.into() }),
        Claim::NotASocket => return Err(ApiError::NotASocket { path: path.into() }),
        Claim::Stale => {
            tracing::info!(socket = %path.display(), "removing a stale socket");
            std::fs::remove_file(path).map_err(|source| ApiError::Stale {
                path: path.into(),
                source,
            })?;
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.into(),
        source,
    })?;
    restrict(path, admin_gid).map_err(|source| {
        let _ = std::fs::remove_file(path);
        ApiError::Permissions {
            path: path.into(),
            source,
        }
    })?;
    let service = ControlServer::new(ControlService {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_REQUEST)
    .max_encoding_message_size(MAX_RESPONSE);
    let guard = move |req| check_peer(req, admin_gid);
    let guarded = tonic::service::interceptor::InterceptedService::new(service, guard);
    let (reporter, health) = tonic_health::server::health_reporter();
    let health = tonic::service::interceptor::InterceptedService::new(health, guard);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(super::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;
    let reflection = tonic::service::interceptor::InterceptedService::new(reflection, guard);
    let follow = tokio::spawn(super::health::follow(reporter, state.clone()));
    let incoming = UnixListenerStream::new(listener);
    let socket = path.display().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(out_of_range_is_invalid))
            .add_service(guarded)
            .add_service(health)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        follow.abort();
        if let Err(e) = result {
            tracing::error!(socket, error = %e, "the control API stopped");
        }
    });
    tracing::info!(socket = %path.display(), admin_gid, "control API listening");
    Ok(Server {
        path: path.into(),
        task,
        stop: Some(stop),
    })
}

/// 0600 root, or 0660 with the admin group: the file mode is the first
/// fence, [`check_peer`] the second.
fn restrict(path: &Path, admin_gid: Option<u32>) -> std::io::Result<()> {
    let mode = match admin_gid {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether bind-mounting `source` into the workspace would make the
/// socket reachable from it (the source is the socket or one of its
/// directories). Symlinks are resolved where the paths exist, so a link to
/// the socket's directory counts too.
pub fn exposes(source: &Path, socket: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let socket_dir = socket.parent().map(real).unwrap_or_default();
    let socket = match socket.file_name() {
        Some(name) => socket_dir.join(name),
        None => socket.to_path_buf(),
    };
    socket.starts_with(real(source))
}

/// tonic answers a request over the size limit with OutOfRange; to the
/// caller it is a malformed request, InvalidArgument. No handler here
/// returns OutOfRange, so the rewrite cannot hide anything else.
fn out_of_range_is_invalid<B>(mut res: http::Response<B>) -> http::Response<B> {
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if res.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(out_of_range.as_bytes()) {
        let invalid = (tonic::Code::InvalidArgument as i32).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&invalid) {
            res.headers_mut().insert("grpc-status", v);
        }
    }
    res
}

fn check_peer(req: Request<()>, admin_gid: Option<u32>) -> Result<Request<()>, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied("the peer's credentials are unknown"))?;
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    match peer::authorize(&peer, admin_gid, || {
        peer::groups_of(Path::new("/proc"), &peer)
    }) {
        Verdict::Allowed => Ok(req),
        Verdict::Denied(why) => {
            tracing::warn!(uid = peer.uid, pid = peer.pid, "control API call refused");
            Err(Status::permission_denied(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_that_would_expose_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/cvmd");
        std::fs::create_dir_all(&run).unwrap();
        let socket = run.join("cvmd.sock");
        assert!(exposes(&run, &socket));
        assert!(exposes(&dir.path().join("run"), &socket));
        assert!(exposes(&socket, &socket));
        assert!(!exposes(&dir.path().join("home"), &socket));
        assert!(!exposes(&run.join("cvmd.sock.d"), &socket));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        assert!(exposes(&link, &socket), "through a symlink");
    }

    #[test]
    fn probe_tells_free_stale_busy_and_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        assert_eq!(probe(&p), Claim::Free);
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert_eq!(probe(&p), Claim::Busy);
        drop(l);
        assert_eq!(probe(&p), Claim::Stale);
        let f = dir.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(probe(&f), Claim::NotASocket);
    }
}
