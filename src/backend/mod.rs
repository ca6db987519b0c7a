//! Where a workspace's image and rootfs come from, behind one interface:
//! `native` (cvmd's own registry client, content store and layer cache) or
//! `containerd` (the node's containerd: its content store, snapshots and
//! differ, through its gRPC socket). `cvmd run`, `cvmd rootfs` and
//! `cvmd prefetch` all ask a [`Backend`] to make the image ready; `run`
//! and `rootfs` to mount its rootfs, and to release both at the end (or, for
//! `rootfs`, to keep them until `--unmount`).

pub mod containerd;
mod native;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::idmap::IdMapSetting;
use crate::image::{PullOptions, PullPolicy};
use crate::pull::ProgressSink;
use crate::registry::Reference;
use crate::rootfs::{IdMap, IdMapMode, Mode, ModePreference};

/// Which backend, and the containerd it would use.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub choice: Choice,
    pub containerd: containerd::Options,
}

/// How a workspace's rootfs is assembled over the image's layers.
#[derive(Debug, Clone, Copy)]
pub struct RootfsOptions {
    pub mode: ModePreference,
    pub idmap: IdMapSetting,
}

/// Who holds an image while it is used: the workspace identity its leases
/// are named after, and where its rootfs is mounted when that outlives
/// cvmd (`cvmd rootfs`).
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    pub identity: &'a str,
    pub mount: Option<&'a Path>,
}

/// One rootfs to mount for `identity`.
#[derive(Debug, Clone)]
pub struct MountRequest<'a> {
    pub identity: &'a str,
    /// The workspace's disk: its upper dir or flat copy.
    pub disk: PathBuf,
    pub target: PathBuf,
    pub options: RootfsOptions,
    /// Discard the disk first.
    pub reset: bool,
    /// With `reset`: the paths (as the workspace sees them) moved from the
    /// old disk into the new one (a rebase on an image change).
    pub carry: Vec<PathBuf>,
}

/// The `image_backend` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Native,
    Containerd,
    Auto,
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Choice::Native),
            "containerd" => Ok(Choice::Containerd),
            "auto" => Ok(Choice::Auto),
            _ => Err(format!("{s:?} is not one of native, containerd, auto")),
        }
    }
}

/// What to do about containerd, before asking it anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Native,
    /// Use containerd; if it does not answer, fail (`required`) or fall
    /// back to native.
    Containerd {
        required: bool,
    },
}

/// `auto` looks only at the socket's presence first, so a machine without
/// containerd pays one `stat` and logs nothing.
pub fn plan(choice: Choice, socket_present: bool) -> Plan {
    match choice {
        Choice::Native => Plan::Native,
        Choice::Containerd => Plan::Containerd { required: true },
        Choice::Auto if socket_present => Plan::Containerd { required: false },
        Choice::Auto => Plan::Native,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Containerd(#[from] containerd::ContainerdError),
    #[error("lazy start: {0}; set CVMD_LAZY=off to pull images whole")]
    Lazy(String),
    #[error("image config of {reference} is not valid: {why}; rebuild and push the image")]
    Config { reference: String, why: String },
}

/// An image ready to boot: its config read from the backend's store.
#[derive(Debug, Clone)]
pub struct ReadyImage {
    /// The reference as asked for (normalised).
    pub reference: String,
    /// The manifest digest.
    pub digest: Digest,
    pub config: ImageConfiguration,
    /// False when everything came from the backend's store without a
    /// registry.
    pub pulled: bool,
    /// Where it came from, as Status reports it.
    pub origin: String,
    source: Source,
}

impl ReadyImage {
    /// What a lazy start resolved: its background completion pulls that
    /// image; `None` unless started lazily.
    pub fn lazily_resolved(&self) -> Option<crate::image::Resolved> {
        match &self.source {
            Source::Native {
                lazy: Some(image), ..
            } => Some(image.resolved.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Source {
    /// The record, and the lease taken when it was found or pulled: the
    /// layers are protected from gc from then on, not only once mounted.
    Native {
        record: crate::store::images::ImageRecord,
        lease: std::sync::Arc<crate::store::lease::Lease>,
        /// Served before its layers are downloaded (`crate::lazy`).
        lazy: Option<std::sync::Arc<crate::lazy::LazyImage>>,
    },
    /// The chain ID of the top layer: the parent of the workspace snapshot.
    Containerd { chain_id: Option<Digest> },
}

/// A mounted workspace rootfs; hand it back to [`Backend::release`].
#[derive(Debug)]
pub struct Rootfs {
    pub target: PathBuf,
    pub idmap: Option<IdMap>,
    pub mode: Mode,
    pub idmap_mode: IdMapMode,
    /// How long each step took.
    pub phases: Vec<(&'static str, std::time::Duration)>,
    hold: Hold,
}

impl Rootfs {
    /// The lazy layers, to complete in the background; empty unless
    /// started lazily.
    pub fn lazy_layers(&self) -> Vec<crate::lazy::MountedLayer> {
        match &self.hold {
            Hold::Native(_, Some(mounts)) => mounts.layers(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug)]
enum Hold {
    /// Keeps the layers from cvmd's gc while mounted; a lazy image's FUSE
    /// mounts, unmounted after the rootfs.
    Native(
        #[allow(dead_code)] std::sync::Arc<crate::store::lease::Lease>,
        Option<crate::lazy::LazyMounts>,
    ),
    Containerd(containerd::WorkspaceSnapshot),
}

#[derive(Debug)]
pub enum Backend {
    Native,
    Containerd(containerd::Containerd, containerd::PullRoute),
}

impl Backend {
    /// The backend the settings ask for; `auto` falls back to native with
    /// one warning when a containerd socket is present but does not answer.
    pub async fn select(options: &BackendOptions) -> Result<Backend, BackendError> {
        let socket = &options.containerd.socket;
        let namespace = &options.containerd.namespace;
        match plan(options.choice, socket.exists()) {
            Plan::Native => {
                tracing::debug!(choice = ?options.choice, "image backend: native");
                Ok(Backend::Native)
            }
            Plan::Containerd { required } => {
                let connected = containerd::Containerd::connect(socket, namespace).await;
                // auto uses containerd only where cvmd can read its
                // snapshots; preflight says the same.
                let connected = match connected {
                    Ok(c) if !required => match c.snapshotter().await {
                        Ok(s) => match s.problem() {
                            None => Ok(c),
                            Some(problem) => Err(containerd::ContainerdError::Invalid {
                                what: format!("containerd at {}", socket.display()),
                                why: problem,
                            }),
                        },
                        Err(e) => Err(e),
                    },
                    other => other,
                };
                match connected {
                    Ok(c) => {
                        tracing::info!(socket = %socket.display(), version = %c.version(), namespace = %namespace, "image backend: containerd");
                        Ok(Backend::Containerd(c, options.containerd.route.clone()))
                    }
                    Err(e) if !required => {
                        tracing::warn!(error = %e, "image backend auto: containerd cannot serve, using cvmd's own");
                        Ok(Backend::Native)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Containerd(..) => "containerd",
        }
    }

    /// Makes `reference` ready according to `policy`, reporting progress;
    /// from here on it is held for `holder` (cvmd's lease on its layers, or
    /// containerd's image record).
    pub async fn ensure(
        &self,
        pull: &PullOptions,
        reference: &Reference,
        policy: PullPolicy,
        holder: Holder<'_>,
        lazy: Option<&crate::lazy::LazyOptions>,
        progress: &dyn ProgressSink,
    ) -> Result<ReadyImage, BackendError> {
        match self {
            Backend::Native => {
                native::ensure(pull, reference, policy, holder, lazy, progress).await
            }
            Backend::Containerd(c, route) => {
                let request = containerd::PullRequest {
                    image: pull,
                    route,
                    policy,
                };
                let pulled = c.ensure(&request, reference, progress).await?;
                Ok(ReadyImage {
                    reference: reference.to_string(),
                    digest: pulled.manifest_digest,
                    config: parse_config(&pulled.config, &reference.to_string())?,
                    pulled: pulled.pulled,
                    origin: format!(
                        "containerd {} (namespace {}), {}",
                        c.version(),
                        c.namespace(),
                        pulled.via.describe()
                    ),
                    source: Source::Containerd {
                        chain_id: pulled.chain_id,
                    },
                })
            }
        }
    }

    /// Pulls `reference` as the registry has it now (whatever the pull
    /// policy) into this backend's store, unpacked, for workspaces to come;
    /// returns the manifest digest. Nothing holds it afterwards.
    pub async fn prefetch(
        &self,
        pull: &PullOptions,
        reference: &Reference,
        progress: &dyn ProgressSink,
    ) -> Result<Digest, BackendError> {
        match self {
            Backend::Native => Ok(crate::image::pull(pull, reference, true, progress)
                .await?
                .manifest_digest),
            Backend::Containerd(c, route) => {
                let request = containerd::PullRequest {
                    image: pull,
                    route,
                    policy: PullPolicy::Always,
                };
                Ok(c.ensure(&request, reference, progress)
                    .await?
                    .manifest_digest)
            }
        }
    }

    /// After a pull into cvmd's cache, drops least recently used images
    /// beyond the budget (sparing `spare` and everything leased); the
    /// containerd backend's store is containerd's to collect.
    pub async fn keep_within_budget(&self, pull: &PullOptions, spare: &[String]) {
        if let Backend::Native = self {
            crate::image::keep_within_budget(pull, spare).await;
        }
    }

    /// Mounts the rootfs of `image` at `request.target`; what a crashed
    /// earlier run left there is removed first. `cache_dir` is the node
    /// cache: cvmd's layers and the table of workspace ID ranges.
    pub async fn mount_rootfs(
        &self,
        cache_dir: &Path,
        image: &ReadyImage,
        request: &MountRequest<'_>,
    ) -> Result<Rootfs, BackendError> {
        match (self, &image.source) {
            (
                Backend::Native,
                Source::Native {
                    record,
                    lease,
                    lazy,
                },
            ) => {
                native::mount_rootfs(cache_dir, record, lease.clone(), lazy.as_ref(), request).await
            }
            (Backend::Containerd(c, _), Source::Containerd { chain_id }) => {
                let (snapshot, dirs) = c
                    .workspace_layers(request.identity, chain_id.as_ref())
                    .await?;
                assemble(cache_dir, dirs, request, Hold::Containerd(snapshot)).await
            }
            _ => unreachable!("an image is mounted by the backend that made it ready"),
        }
    }

    /// Leaves `rootfs` mounted after this process ends, with what holds
    /// its layers (cvmd's lease file, or containerd's view and lease),
    /// until [`Backend::unmount`]. `image` is the one it was mounted from.
    pub fn keep_mounted(&self, rootfs: Rootfs, image: ReadyImage) {
        // The image shares the lease; the rootfs's is the last one then.
        drop(image);
        match rootfs.hold {
            Hold::Native(lease, lazy) => {
                if lazy.is_some() {
                    // Never asked for: only `cvmd run` starts lazily, and it
                    // serves the mounts until it unmounts the rootfs.
                    tracing::warn!(
                        "a lazily started rootfs outlives cvmd: its files stop answering"
                    );
                }
                match std::sync::Arc::try_unwrap(lease) {
                    Ok(lease) => lease.keep_while_mounted(),
                    // Still shared: never dropped, so never removed either.
                    Err(shared) => std::mem::forget(shared),
                }
            }
            // containerd keeps the view and its lease until they are removed.
            Hold::Containerd(snapshot) => drop(snapshot),
        }
    }

    /// Unmounts a rootfs [`Backend::keep_mounted`] left at `target` for
    /// `identity`, and gives back what held its layers. The unmount comes
    /// first: it needs no containerd, whose view goes after.
    pub async fn unmount(
        options: &BackendOptions,
        cache_dir: &Path,
        identity: &str,
        target: &Path,
    ) -> Result<(), BackendError> {
        crate::rootfs::teardown(target)?;
        // Whichever backend mounted it: the lease file is cvmd's.
        crate::store::lease::Lease::release(cache_dir, identity);
        if let Backend::Containerd(c, _) = Backend::select(options).await? {
            c.release_workspace(identity).await?;
        }
        Ok(())
    }

    /// Gives back what this process's interrupted pulls held (containerd's
    /// pull leases), so nothing waits for their expiry; cvmd's own store
    /// needs nothing (its partial downloads are kept for resuming).
    pub async fn abandon_pulls(&self) {
        if let Backend::Containerd(c, _) = self {
            if let Err(e) = c.delete_pull_leases().await {
                tracing::warn!(error = %e, "cannot delete the interrupted pull's lease; containerd drops it within the hour");
            }
        }
    }

    /// Unmounts the rootfs and gives back what held it (cvmd's lease, or
    /// containerd's view and lease).
    pub async fn release(&self, rootfs: Rootfs) -> Result<(), BackendError> {
        crate::rootfs::teardown(&rootfs.target)?;
        release_hold(rootfs.hold).await
    }
}

async fn release_hold(hold: Hold) -> Result<(), BackendError> {
    match hold {
        Hold::Containerd(snapshot) => snapshot.release().await?,
        Hold::Native(lease, lazy) => {
            if let Some(mounts) = lazy {
                mounts.unmount();
            }
            drop(lease);
        }
    }
    Ok(())
}

/// Assembles the rootfs from layer dirs (bottom to top) as `request`
/// says, the same way for both backends; `hold` keeps the layers while it
/// is mounted, and is given back on a failure.
async fn assemble(
    cache_dir: &Path,
    layers: Vec<PathBuf>,
    request: &MountRequest<'_>,
    hold: Hold,
) -> Result<Rootfs, BackendError> {
    let target = &request.target;
    let assembled = async {
        let idmap = request
            .options
            .idmap
            .resolve(cache_dir, request.identity)
            .await?;
        // A crashed earlier run may have left its mount.
        crate::rootfs::teardown(target)?;
        let assembled = crate::rootfs::assemble(&crate::rootfs::Request {
            layers,
            workspace_dir: request.disk.clone(),
            target: target.clone(),
            mode: request.options.mode,
            idmap,
            reset: request.reset,
            carry: request.carry.clone(),
        })?;
        Ok::<_, BackendError>((idmap, assembled))
    }
    .await;
    match assembled {
        Ok((idmap, assembled)) => {
            tracing::info!(mode = ?assembled.mode, idmap = ?assembled.idmap_mode, "rootfs ready");
            Ok(Rootfs {
                target: target.clone(),
                idmap,
                mode: assembled.mode,
                idmap_mode: assembled.idmap_mode,
                phases: assembled.phases,
                hold,
            })
        }
        Err(e) => {
            if let Err(cleanup) = release_hold(hold).await {
                tracing::warn!(error = %cleanup, "cannot give back the layers after a failed rootfs");
            }
            Err(e)
        }
    }
}

fn parse_config(bytes: &[u8], reference: &str) -> Result<ImageConfiguration, BackendError> {
    serde_json::from_slice(bytes).map_err(|e| BackendError::Config {
        reference: reference.to_string(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_refuse_others() {
        assert_eq!("auto".parse(), Ok(Choice::Auto));
        assert_eq!("containerd".parse(), Ok(Choice::Containerd));
        assert_eq!("native".parse(), Ok(Choice::Native));
        assert!("Containerd".parse::<Choice>().is_err());
    }

    #[test]
    fn auto_without_a_socket_is_native_without_asking() {
        assert_eq!(plan(Choice::Auto, false), Plan::Native);
        assert_eq!(
            plan(Choice::Auto, true),
            Plan::Containerd { required: false }
        );
        assert_eq!(
            plan(Choice::Containerd, false),
            Plan::Containerd { required: true }
        );
        assert_eq!(plan(Choice::Native, true), Plan::Native);
    }
}
