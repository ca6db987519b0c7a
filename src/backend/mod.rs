//! Where a workspace's image and rootfs come from, behind one interface:
//! `native` (cvmd's own registry client, content store and layer cache) or
//! `containerd` (the node's containerd: its content store, snapshots and
//! differ, through its gRPC socket). `cvmd run` asks a [`Backend`] to make
//! the image ready, to mount its rootfs, and to release both at the end.

pub mod containerd;
mod native;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::ImageConfiguration;

use crate::config::Settings;
use crate::digest::Digest;
use crate::image::PullPolicy;
use crate::pull::ProgressSink;
use crate::registry::Reference;
use crate::rootfs::IdMap;

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

#[derive(Debug, Clone)]
enum Source {
    /// The record, and the lease taken when it was found or pulled: the
    /// layers are protected from gc from then on, not only once mounted.
    Native {
        record: crate::store::images::ImageRecord,
        lease: std::sync::Arc<crate::store::lease::Lease>,
    },
    /// The chain ID of the top layer: the parent of the workspace snapshot.
    Containerd { chain_id: Option<Digest> },
}

/// A mounted workspace rootfs; hand it back to [`Backend::release`].
pub struct Rootfs {
    pub target: PathBuf,
    pub idmap: Option<IdMap>,
    /// How it was assembled, as Status reports it: overlay or flat; and
    /// none, idmapped-mount or chowned-copy.
    pub mode: &'static str,
    pub idmap_mode: &'static str,
    hold: Hold,
}

enum Hold {
    /// Keeps the layers from cvmd's gc while mounted.
    Native(#[allow(dead_code)] std::sync::Arc<crate::store::lease::Lease>),
    Containerd(containerd::WorkspaceSnapshot),
}

pub enum Backend {
    Native,
    Containerd(containerd::Containerd),
}

impl Backend {
    /// The backend the settings ask for; `auto` falls back to native with
    /// one warning when a containerd socket is present but does not answer.
    pub async fn select(settings: &Settings) -> Result<Backend, BackendError> {
        let socket = &settings.containerd_socket;
        match plan(settings.image_backend, socket.exists()) {
            Plan::Native => {
                tracing::debug!(choice = ?settings.image_backend, "image backend: native");
                Ok(Backend::Native)
            }
            Plan::Containerd { required } => {
                let connected =
                    containerd::Containerd::connect(socket, &settings.containerd_namespace).await;
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
                        tracing::info!(socket = %socket.display(), version = %c.version(), namespace = %settings.containerd_namespace, "image backend: containerd");
                        Ok(Backend::Containerd(c))
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
            Backend::Containerd(_) => "containerd",
        }
    }

    /// Makes `reference` ready according to `policy`, reporting progress.
    pub async fn ensure(
        &self,
        settings: &Settings,
        reference: &Reference,
        policy: PullPolicy,
        progress: &dyn ProgressSink,
    ) -> Result<ReadyImage, BackendError> {
        match self {
            Backend::Native => native::ensure(settings, reference, policy, progress).await,
            Backend::Containerd(c) => {
                let settings = &Settings {
                    pull_policy: policy,
                    ..settings.clone()
                };
                let pulled = c.ensure(settings, reference, progress).await?;
                Ok(ReadyImage {
                    reference: reference.to_string(),
                    digest: pulled.manifest_digest,
                    config: parse_config(&pulled.config, &reference.to_string())?,
                    pulled: pulled.pulled,
                    origin: format!(
                        "containerd {} (namespace {}), {}",
                        c.version(),
                        settings.containerd_namespace,
                        pulled.via.describe()
                    ),
                    source: Source::Containerd {
                        chain_id: pulled.chain_id,
                    },
                })
            }
        }
    }

    /// Mounts the workspace's rootfs of `image` at `target`; what a crashed
    /// earlier run left there is removed first.
    pub async fn mount_rootfs(
        &self,
        settings: &Settings,
        image: &ReadyImage,
        disk: &crate::disk::Prepared,
        target: &Path,
    ) -> Result<Rootfs, BackendError> {
        match (self, &image.source) {
            (Backend::Native, Source::Native { record, lease }) => {
                native::mount_rootfs(settings, record, lease.clone(), disk, target).await
            }
            (Backend::Containerd(c), Source::Containerd { chain_id }) => {
                let (snapshot, dirs) = c
                    .workspace_layers(&settings.node_identity(), chain_id.as_ref())
                    .await?;
                assemble(settings, dirs, disk, target, Hold::Containerd(snapshot)).await
            }
            _ => unreachable!("an image is mounted by the backend that made it ready"),
        }
    }

    /// Gives back what this process's interrupted pulls held (containerd's
    /// pull leases), so nothing waits for their expiry; cvmd's own store
    /// needs nothing (its partial downloads are kept for resuming).
    pub async fn abandon_pulls(&self) {
        if let Backend::Containerd(c) = self {
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
        Hold::Native(lease) => drop(lease),
    }
    Ok(())
}

/// Assembles the rootfs at `target` from layer dirs (bottom to top), the
/// workspace's disk as `disk` says, the same way for both backends; `hold`
/// keeps the layers while it is mounted, and is given back on a failure.
async fn assemble(
    settings: &Settings,
    layers: Vec<PathBuf>,
    disk: &crate::disk::Prepared,
    target: &Path,
    hold: Hold,
) -> Result<Rootfs, BackendError> {
    let assembled = async {
        let idmap = crate::workspace::idmap_for(
            settings.idmap,
            &settings.cache_dir,
            &settings.node_identity(),
        )
        .await?;
        // A crashed earlier run may have left its mount.
        crate::rootfs::teardown(target)?;
        let assembled = crate::rootfs::assemble(&crate::rootfs::Request {
            layers,
            workspace_dir: disk.dir.clone(),
            target: target.to_path_buf(),
            mode: settings.rootfs_mode,
            idmap,
            reset: disk.reset,
            carry: disk.carry.clone(),
        })?;
        Ok::<_, BackendError>((idmap, assembled))
    }
    .await;
    match assembled {
        Ok((idmap, assembled)) => {
            tracing::info!(mode = ?assembled.mode, idmap = ?assembled.idmap_mode, "rootfs ready");
            Ok(Rootfs {
                target: target.to_path_buf(),
                idmap,
                mode: crate::workspace::rootfs_mode_name(assembled.mode),
                idmap_mode: crate::workspace::idmap_mode_name(assembled.idmap_mode),
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
