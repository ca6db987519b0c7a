//! Unpacking in containerd: each layer applied by containerd's differ on
//! an active snapshot of its parent chain, committed as its own chain ID.

use std::collections::HashMap;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;

use super::{Containerd, ContainerdError, SNAPSHOTTER};
use crate::digest::Digest;
use crate::registry::manifest::Layer;

impl Containerd {
    /// Applies one layer on its parent's snapshot and commits it as its
    /// chain ID, checking the diff ID containerd computed.
    pub(super) async fn unpack_layer(
        &self,
        lease: &str,
        parent: &str,
        chain: &Digest,
        layer: &Layer,
        diff_id: &Digest,
    ) -> Result<(), ContainerdError> {
        let key = super::unique(&format!("cvmd-extract-{}", chain.hex()));
        let what = format!("unpacking layer {}", layer.digest);
        let request = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        let mounts = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(request, Some(lease)))
            .await
            .map_err(self.failed(&what))?
            .into_inner()
            .mounts;
        let applied = self.apply(lease, layer, mounts, &what).await;
        let applied = match applied {
            Ok(d) if d == diff_id.to_string() => Ok(()),
            Ok(actual) => Err(ContainerdError::DiffIdMismatch {
                what: what.clone(),
                expected: diff_id.to_string(),
                actual,
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            self.remove_snapshot(&key).await.ok();
            return Err(e);
        }
        let request = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: chain.to_string(),
            key: key.clone(),
            labels: HashMap::new(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .commit(self.req(request, Some(lease)))
            .await
        {
            Ok(_) => Ok(()),
            // Another pull committed the same chain first: theirs is as good.
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(&key).await.ok();
                Ok(())
            }
            Err(s) => {
                let e = self.failed(&what)(s);
                self.remove_snapshot(&key).await.ok();
                Err(e)
            }
        }
    }

    pub(super) async fn apply(
        &self,
        lease: &str,
        layer: &Layer,
        mounts: Vec<containerd_client::types::Mount>,
        what: &str,
    ) -> Result<String, ContainerdError> {
        let request = ApplyRequest {
            diff: Some(Descriptor {
                media_type: layer.media_type.to_string(),
                digest: layer.digest.to_string(),
                size: i64::try_from(layer.size).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            }),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.req(request, Some(lease)))
            .await
            .map_err(self.failed(what))?
            .into_inner()
            .applied;
        Ok(applied.map(|d| d.digest).unwrap_or_default())
    }

    pub(super) async fn has_snapshot(&self, key: &str) -> Result<bool, ContainerdError> {
        let request = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(request, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.failed(&format!("looking up snapshot {key}"))(s)),
        }
    }

    /// Removes a snapshot; one that is not there is fine.
    pub(super) async fn remove_snapshot(&self, key: &str) -> Result<(), ContainerdError> {
        let request = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .remove(self.req(request, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.failed(&format!("removing snapshot {key}"))(s)),
        }
    }
}
