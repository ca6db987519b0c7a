//! The containerd image backend: images pulled into the node's containerd
//! under a containerd lease, and the rootfs mounted from an active
//! snapshot on the image's chain ID. Two pull paths:
//! - transfer (containerd 1.7 and later): containerd fetches and unpacks,
//!   and asks cvmd for the registry's credentials over a stream;
//! - content (every version, 1.6 has nothing else): cvmd fetches the blobs
//!   with its own registry client into the content store, and has the
//!   diff service unpack them.

mod content;
mod fetch;
mod ids;
mod introspect;
mod pull;
mod snapshot;
mod transfer;
mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest, ListRequest};
use containerd_client::tonic::{self, transport::Channel, Code};

pub use ids::{chain_ids, check_namespace};
pub use introspect::Snapshotter;
pub use pull::{PullRequest, Pulled};
pub use snapshot::WorkspaceSnapshot;

use crate::digest::Digest;

/// The `containerd_pull` setting: how the containerd backend pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPath {
    /// The transfer service where containerd has it and the pull needs
    /// nothing it cannot carry, else content.
    Auto,
    Transfer,
    Content,
}

impl std::str::FromStr for PullPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PullPath::Auto),
            "transfer" => Ok(PullPath::Transfer),
            "content" => Ok(PullPath::Content),
            _ => Err(format!("{s:?} is not one of auto, transfer, content")),
        }
    }
}

/// Where the node's containerd is and how cvmd uses it.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// The namespace that holds cvmd's images, snapshots and leases.
    pub namespace: String,
    pub route: PullRoute,
}

/// Which way the containerd backend pulls, and what containerd's own
/// resolver reads.
#[derive(Debug, Clone)]
pub struct PullRoute {
    pub path: PullPath,
    /// The node's hosts.toml folder, for the transfer service.
    pub hosts_dir: Option<PathBuf>,
}

/// The snapshotter cvmd unpacks into and mounts from: the one every
/// containerd on Linux has, and the one whose mounts cvmd can mount itself.
pub const SNAPSHOTTER: &str = "overlayfs";

/// How long containerd keeps what a pull wrote if cvmd dies before it
/// deletes the pull's lease.
const PULL_LEASE_TTL: Duration = Duration::from_secs(3600);

/// Bounds the first contact, so `auto` and a hung containerd cannot stall
/// a start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const BACKEND_HINT: &str = "or set CVMD_IMAGE_BACKEND=native";

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd at {socket} does not answer ({why}): start containerd and mount its socket into the outer container (CVMD_CONTAINERD_SOCKET), {BACKEND_HINT}")]
    Unreachable { socket: String, why: String },
    #[error("containerd at {socket} is version {version}, too old: cvmd needs containerd 1.6 or later; upgrade it, {BACKEND_HINT}")]
    TooOld { socket: String, version: String },
    #[error("containerd at {socket} stopped answering while {what} ({why}): check that containerd runs, then start the workspace again")]
    Gone {
        socket: String,
        what: String,
        why: String,
    },
    #[error("containerd at {socket} refused {what}: {why}; see containerd's log on the node for why, {BACKEND_HINT}")]
    Call {
        socket: String,
        what: String,
        why: String,
    },
    #[error("image {image} is not in containerd (namespace {namespace}) and the pull policy is Never: pull it into that namespace first, or allow pulls")]
    NotPresent { image: String, namespace: String },
    #[error("containerd at {socket} could not pull {image}: {why}; check the reference and the registry's credentials (cvmd answers containerd's requests from CVMD_PULL_SECRET and the docker config), or set CVMD_CONTAINERD_PULL=content to pull with cvmd's own client")]
    TransferPull {
        image: String,
        socket: String,
        why: String,
    },
    #[error("containerd at {socket} has no transfer service (version {version}) and CVMD_CONTAINERD_PULL is transfer: upgrade containerd to 1.7 or later, or set CVMD_CONTAINERD_PULL=auto")]
    NoTransfer { socket: String, version: String },
    #[error("containerd's transfer service pulled {image} but left no {SNAPSHOTTER} snapshot for {platform}: it unpacks only for the platforms and snapshotters in its config (the transfer plugin's unpack_config); add {platform} with {SNAPSHOTTER} there, or set CVMD_CONTAINERD_PULL=auto or content to have cvmd unpack layer by layer")]
    NotUnpacked { image: String, platform: String },
    #[error("{what}: containerd unpacked content with diff ID {actual}, the image config says {expected}; the image is corrupt")]
    DiffIdMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} in containerd's content store is not valid: {why}")]
    Invalid { what: String, why: String },
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
}

/// A connection to one containerd, in one namespace.
#[derive(Debug, Clone)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    version: String,
}

impl Containerd {
    /// Connects and checks the version: a containerd that is down, absent
    /// or too old is one clear error here, before any work.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let unreachable = |why: String| ContainerdError::Unreachable {
            socket: socket.display().to_string(),
            why,
        };
        if !socket.exists() {
            return Err(unreachable("no such socket".into()));
        }
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))?
            .map_err(|e| unreachable(crate::registry::client::describe(&e)))?;
        let version = tokio::time::timeout(
            CONNECT_TIMEOUT,
            VersionClient::new(channel.clone()).version(()),
        )
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|s| unreachable(s.message().to_string()))?
        .into_inner()
        .version;
        match ids::parse_version(&version) {
            Some(v) if v < ids::MIN_VERSION => {
                return Err(ContainerdError::TooOld {
                    socket: socket.display().to_string(),
                    version,
                })
            }
            Some(v) => tracing::debug!(
                %version,
                transfer_service = v >= ids::TRANSFER_VERSION,
                "containerd version"
            ),
            None => {
                tracing::warn!(%version, "cannot read containerd's version; assuming it is recent")
            }
        }
        Ok(Containerd {
            channel,
            socket: socket.to_path_buf(),
            namespace: namespace.to_string(),
            version,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether this containerd's version has the transfer service (an
    /// unreadable version is taken as recent, as `connect` does).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn has_transfer_service(&self) -> bool {
        self.at_least(ids::TRANSFER_VERSION)
    }

    fn at_least(&self, version: (u32, u32)) -> bool {
        ids::parse_version(&self.version).is_none_or(|v| v >= version)
    }

    /// A request in cvmd's namespace, under `lease` when given (containerd
    /// then keeps everything the call creates until the lease goes).
    fn req<T>(&self, message: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        let md = r.metadata_mut();
        // Both are checked identifiers (ASCII), so parsing cannot fail.
        md.insert(
            "containerd-namespace",
            self.namespace.parse().expect("checked namespace"),
        );
        if let Some(lease) = lease {
            md.insert("containerd-lease", lease.parse().expect("ascii lease id"));
        }
        r
    }

    /// The error for a failed call: a transport failure means containerd
    /// went away (or restarts), anything else is containerd's answer.
    fn failed(&self, what: &str) -> impl Fn(tonic::Status) -> ContainerdError + '_ {
        let what = what.to_string();
        move |status| status_error(&self.socket, &what, &status)
    }

    /// Creates lease `id` (an existing one is reused); with a `ttl`,
    /// containerd drops it by itself after that long.
    async fn create_lease(&self, id: &str, ttl: Option<Duration>) -> Result<(), ContainerdError> {
        let mut labels = HashMap::new();
        if let Some(ttl) = ttl {
            labels.insert(
                "containerd.io/gc.expire".to_string(),
                ids::rfc3339(SystemTime::now() + ttl),
            );
        }
        let request = CreateRequest {
            id: id.to_string(),
            labels,
        };
        match LeasesClient::new(self.channel.clone())
            .create(self.req(request, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(self.failed(&format!("creating lease {id}"))(s)),
        }
    }

    /// Deletes the pull leases this process created (an interrupted pull's).
    pub async fn delete_pull_leases(&self) -> Result<(), ContainerdError> {
        let request = ListRequest {
            filters: vec![format!("id~=\"^{}\"", pull_lease_prefix())],
        };
        let leases = LeasesClient::new(self.channel.clone())
            .list(self.req(request, None))
            .await
            .map_err(self.failed("listing leases"))?
            .into_inner()
            .leases;
        for lease in leases {
            tracing::info!(lease = %lease.id, "deleting the interrupted pull's lease");
            self.delete_lease(&lease.id).await?;
        }
        Ok(())
    }

    async fn delete_lease(&self, id: &str) -> Result<(), ContainerdError> {
        let request = DeleteRequest {
            id: id.to_string(),
            sync: false,
        };
        match LeasesClient::new(self.channel.clone())
            .delete(self.req(request, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.failed(&format!("deleting lease {id}"))(s)),
        }
    }
}

/// The error for a failed call: a transport failure means containerd went
/// away (or restarts), anything else is containerd's own answer.
fn status_error(socket: &Path, what: &str, status: &tonic::Status) -> ContainerdError {
    let socket = socket.display().to_string();
    let what = what.to_string();
    let why = status.message().to_string();
    let transport = match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    };
    if transport {
        ContainerdError::Gone { socket, what, why }
    } else {
        ContainerdError::Call { socket, what, why }
    }
}

/// What this process's pull leases start with.
fn pull_lease_prefix() -> String {
    format!("cvmd-pull-{}-", std::process::id())
}

/// A name unique to this process and moment, for leases and temporary keys.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The label that keeps `child` alive while the content carrying it lives
/// (containerd's garbage collector follows `containerd.io/gc.ref.*`).
fn gc_ref_content(name: &str, child: &Digest) -> (String, String) {
    (
        format!("containerd.io/gc.ref.content.{name}"),
        child.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_says_containerd_stopped_answering() {
        let socket = Path::new("/run/c.sock");
        let e = status_error(
            socket,
            "writing content x",
            &tonic::Status::unavailable("connection reset"),
        );
        assert_eq!(
            e.to_string(),
            "containerd at /run/c.sock stopped answering while writing content x (connection reset): check that containerd runs, then start the workspace again"
        );
        let e = status_error(
            socket,
            "preparing snapshot k",
            &tonic::Status::failed_precondition("parent does not exist"),
        );
        assert_eq!(
            e.to_string(),
            "containerd at /run/c.sock refused preparing snapshot k: parent does not exist; see containerd's log on the node for why, or set CVMD_IMAGE_BACKEND=native"
        );
    }

    #[test]
    fn too_old_and_down_name_the_socket_and_the_way_out() {
        let e = ContainerdError::TooOld {
            socket: "/run/c.sock".into(),
            version: "1.5.18".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("containerd at /run/c.sock is version 1.5.18, too old"),
            "{text}"
        );
        assert!(text.contains("CVMD_IMAGE_BACKEND=native"), "{text}");
    }
}
