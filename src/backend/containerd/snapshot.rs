//! The workspace's layers from containerd: a read-only view snapshot on
//! the image's chain ID (key and lease named after the workspace) holds the
//! committed layer snapshots while the workspace runs, and its mounts name
//! their directories. cvmd assembles the rootfs from those directories as
//! it does from its own cache (its overlay, with the writable layer in the
//! workspace's state dir, so it outlasts a restart as with the native
//! backend; or an ID-mapped or flat copy). View and lease go when the
//! workspace ends.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
use containerd_client::types::Mount;

use super::{Containerd, ContainerdError, SNAPSHOTTER};
use crate::digest::Digest;

/// A workspace's view snapshot and the lease that holds it.
#[derive(Debug)]
pub struct WorkspaceSnapshot {
    containerd: Containerd,
    key: String,
    lease: String,
}

impl WorkspaceSnapshot {
    /// Removes the view, then its lease.
    pub async fn release(self) -> Result<(), ContainerdError> {
        self.containerd.remove_snapshot(&self.key).await?;
        self.containerd.delete_lease(&self.lease).await
    }
}

impl Containerd {
    /// Takes a view on `parent` for `workspace` and returns the layer
    /// directories, bottom to top. What a crashed earlier run left (its
    /// view, lease) is replaced.
    pub async fn workspace_layers(
        &self,
        workspace: &str,
        parent: Option<&Digest>,
    ) -> Result<(WorkspaceSnapshot, Vec<PathBuf>), ContainerdError> {
        let key = workspace_key(workspace);
        self.remove_snapshot(&key).await?;
        self.create_lease(&key, None).await?;
        let snapshot = WorkspaceSnapshot {
            containerd: self.clone(),
            key: key.clone(),
            lease: key.clone(),
        };
        match self.view(&key, parent).await {
            Ok(layers) => Ok((snapshot, layers)),
            Err(e) => {
                if let Err(cleanup) = snapshot.release().await {
                    tracing::warn!(error = %cleanup, "cannot remove the workspace's view after a failure");
                }
                Err(e)
            }
        }
    }

    /// Removes the view and lease of `identity`'s workspace, if any: a
    /// rootfs left mounted after its command ended (`cvmd rootfs`).
    pub async fn release_workspace(&self, identity: &str) -> Result<(), ContainerdError> {
        let key = workspace_key(identity);
        self.remove_snapshot(&key).await?;
        self.delete_lease(&key).await
    }

    async fn view(
        &self,
        key: &str,
        parent: Option<&Digest>,
    ) -> Result<Vec<PathBuf>, ContainerdError> {
        let request = ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
            parent: parent.map(|p| p.to_string()).unwrap_or_default(),
            labels: HashMap::new(),
        };
        let mounts = SnapshotsClient::new(self.channel.clone())
            .view(self.req(request, Some(key)))
            .await
            .map_err(self.failed(&format!("taking view {key}")))?
            .into_inner()
            .mounts;
        let layers = layer_dirs(&mounts).map_err(|why| ContainerdError::Invalid {
            what: format!("the mounts of view {key}"),
            why,
        })?;
        tracing::info!(
            key,
            layers = layers.len(),
            "workspace layers from containerd snapshots"
        );
        Ok(layers)
    }
}

/// The layer directories, bottom to top, that a view's mounts name: the
/// overlayfs snapshotter gives a read-only bind mount of the one layer, or
/// an overlay whose `lowerdir` lists them top first (containerd 2 may give
/// one `lowerdir+=` option per layer instead, also top first).
fn layer_dirs(mounts: &[Mount]) -> Result<Vec<PathBuf>, String> {
    let [m] = mounts else {
        return Err(format!("{} mounts, a view has one", mounts.len()));
    };
    if !m.target.is_empty() {
        return Err(format!("a mount at sub-path {:?}", m.target));
    }
    let mut top_first: Vec<PathBuf> = match m.r#type.as_str() {
        "bind" | "rbind" => vec![PathBuf::from(&m.source)],
        "overlay" => {
            let mut dirs = Vec::new();
            for o in &m.options {
                if let Some(list) = o.strip_prefix("lowerdir=") {
                    dirs.extend(list.split(':').map(PathBuf::from));
                } else if let Some(one) = o.strip_prefix("lowerdir+=") {
                    dirs.push(PathBuf::from(one));
                } else if o.starts_with("upperdir=") || o.starts_with("workdir=") {
                    return Err("a view's overlay has an upper dir".into());
                }
            }
            dirs
        }
        other => {
            return Err(format!(
                "mount type {other:?} (the overlayfs snapshotter gives overlay or bind)"
            ))
        }
    };
    if top_first.is_empty() || top_first.iter().any(|d| !d.is_absolute()) {
        return Err(format!("no absolute layer dirs in {:?}", m.options));
    }
    top_first.reverse();
    Ok(top_first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn one_layer_is_a_bind_of_its_dir() {
        let dirs = layer_dirs(&[mount("bind", "/s/1/fs", &["ro", "rbind"])]).unwrap();
        assert_eq!(dirs, [PathBuf::from("/s/1/fs")]);
    }

    #[test]
    fn overlay_lowers_come_back_bottom_first() {
        let dirs = layer_dirs(&[mount(
            "overlay",
            "overlay",
            &["index=off", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"],
        )])
        .unwrap();
        assert_eq!(dirs, ["/s/1/fs", "/s/2/fs", "/s/3/fs"].map(PathBuf::from));
        let plus = layer_dirs(&[mount(
            "overlay",
            "overlay",
            &["lowerdir+=/s/2/fs", "lowerdir+=/s/1/fs"],
        )])
        .unwrap();
        assert_eq!(plus, ["/s/1/fs", "/s/2/fs"].map(PathBuf::from));
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(layer_dirs(&[]).is_err());
        assert!(layer_dirs(&[mount("tmpfs", "none", &[])]).is_err());
        let upper = mount(
            "overlay",
            "overlay",
            &["lowerdir=/a", "upperdir=/u", "workdir=/w"],
        );
        assert!(layer_dirs(&[upper]).unwrap_err().contains("upper dir"));
        assert!(layer_dirs(&[mount("overlay", "overlay", &["lowerdir=rel/1"])]).is_err());
        let two = [mount("bind", "/a", &[]), mount("bind", "/b", &[])];
        assert!(layer_dirs(&two).is_err());
    }
}

/// The snapshot and lease key of a workspace identity (`NAME` or
/// `NAMESPACE/NAME`). containerd's identifiers allow no '/', so a
/// namespaced identity keeps its name and adds a hash of the whole, which
/// keeps equal names of two namespaces apart.
fn workspace_key(identity: &str) -> String {
    match identity.split_once('/') {
        None => format!("cvmd-workspace-{identity}"),
        Some((_, name)) => {
            let hash = Digest::of(identity.as_bytes());
            format!("cvmd-workspace-{name}-{}", &hash.hex()[..12])
        }
    }
}

#[cfg(test)]
mod key_tests {
    #[test]
    fn equal_names_of_two_namespaces_get_two_keys() {
        let (a, b) = (super::workspace_key("a/ws"), super::workspace_key("b/ws"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("cvmd-workspace-ws-") && !a.contains('/'),
            "{a}"
        );
        assert_eq!(super::workspace_key("ws"), "cvmd-workspace-ws");
    }
}
