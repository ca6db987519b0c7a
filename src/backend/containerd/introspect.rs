//! What `cvmd preflight` asks containerd: where its overlayfs snapshotter
//! keeps snapshots (cvmd mounts them itself, so it must see that path).

use std::path::PathBuf;

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::PluginsRequest;

use super::{Containerd, ContainerdError, SNAPSHOTTER};

/// containerd's snapshotter as it reports itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshotter {
    /// Loaded; its snapshots live under `root` (on the node).
    Loaded { root: Option<PathBuf> },
    /// containerd could not load it (the reason it gives).
    Failed(String),
    /// Not in containerd's plugin list (disabled in its config).
    Absent,
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
        Ok(Snapshotter::Loaded {
            root: plugin.exports.get("root").map(PathBuf::from),
        })
    }
}
