//! What `cvmd preflight` asks containerd: where its overlayfs snapshotter
//! keeps snapshots (cvmd mounts them itself, so it must see that path).

use std::path::PathBuf;

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::PluginsRequest;

use super::{Containerd, ContainerdError, SNAPSHOTTER};

/// containerd's snapshotter as it reports itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshotter {
    /// Loaded; its snapshots live under `root` (on the node), which cvmd
    /// sees at the same path or not.
    Loaded {
        root: Option<PathBuf>,
        visible: bool,
    },
    /// containerd could not load it (the reason it gives).
    Failed(String),
    /// Not in containerd's plugin list (disabled in its config).
    Absent,
}

impl Snapshotter {
    /// Why cvmd cannot use containerd's snapshots, with what to do.
    pub fn problem(&self) -> Option<String> {
        match self {
            Snapshotter::Loaded { visible: true, .. } => None,
            Snapshotter::Loaded { root, visible: false } => {
                let root = root
                    .as_ref()
                    .map_or("its snapshotter root".to_string(), |r| r.display().to_string());
                Some(format!("its overlayfs snapshots ({root}) are not visible here, and cvmd reads them itself: mount the node's {root} into the outer container at the same path (a hostPath volume)"))
            }
            Snapshotter::Failed(why) => Some(format!(
                "it could not load its overlayfs snapshotter ({why}): fix the node's overlayfs support (see containerd's log)"
            )),
            Snapshotter::Absent => Some(
                "it has no overlayfs snapshotter (disabled in its config): enable it".into(),
            ),
        }
    }
}

impl Containerd {
    pub async fn snapshotter(&self) -> Result<Snapshotter, ContainerdError> {
        let request = PluginsRequest {
            filters: vec![format!(
                "type==io.containerd.snapshotter.v1,id=={SNAPSHOTTER}"
            )],
        };
        let plugins = IntrospectionClient::new(self.channel.clone())
            .plugins(self.req(request, None))
            .await
            .map_err(self.failed("listing its plugins"))?
            .into_inner()
            .plugins;
        let Some(plugin) = plugins.into_iter().next() else {
            return Ok(Snapshotter::Absent);
        };
        if let Some(err) = plugin.init_err {
            return Ok(Snapshotter::Failed(err.message));
        }
        let root = plugin.exports.get("root").map(PathBuf::from);
        // The snapshotter makes `snapshots` when it loads; without the
        // hostPath its root is absent here, or an empty dir.
        let visible = root.as_ref().is_some_and(|r| r.join("snapshots").is_dir());
        Ok(Snapshotter::Loaded { root, visible })
    }
}
