//! The workspace's rootfs from containerd: an active snapshot on the
//! image's chain ID (key and lease named after the workspace), mounted at
//! the target; removed with its lease when the workspace ends.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::types::Mount;

use super::mounts::{self, MountSys};
use super::{Containerd, ContainerdError, SNAPSHOTTER};
use crate::digest::Digest;

/// A prepared, mounted workspace snapshot and the lease that holds it.
#[derive(Debug)]
pub struct WorkspaceSnapshot {
    key: String,
    lease: String,
}

impl Containerd {
    /// Prepares the workspace's snapshot on `parent` and mounts it at
    /// `target`. What a crashed earlier run of the same workspace left (its
    /// mount, snapshot, lease) is removed first: in this backend the
    /// workspace's writable layer lives as long as the workspace.
    pub async fn mount_workspace(
        &self,
        workspace: &str,
        parent: Option<&Digest>,
        target: &Path,
    ) -> Result<WorkspaceSnapshot, ContainerdError> {
        let key = format!("cvmd-workspace-{workspace}");
        crate::rootfs::teardown(target)?;
        self.remove_snapshot(&key).await?;
        self.create_lease(&key, None).await?;
        let snapshot = WorkspaceSnapshot {
            key: key.clone(),
            lease: key.clone(),
        };
        let prepared = self.prepare_and_mount(&key, parent, target).await;
        if let Err(e) = prepared {
            let _ = crate::rootfs::teardown(target);
            if let Err(cleanup) = self.remove_workspace(snapshot).await {
                tracing::warn!(error = %cleanup, "cannot remove the workspace snapshot after a failed mount");
            }
            return Err(e);
        }
        Ok(snapshot)
    }

    async fn prepare_and_mount(
        &self,
        key: &str,
        parent: Option<&Digest>,
        target: &Path,
    ) -> Result<(), ContainerdError> {
        let request = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
            parent: parent.map(|p| p.to_string()).unwrap_or_default(),
            labels: HashMap::new(),
        };
        let mounts = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(request, Some(key)))
            .await
            .map_err(self.failed(&format!("preparing snapshot {key}")))?
            .into_inner()
            .mounts;
        std::fs::create_dir_all(target).map_err(|e| ContainerdError::Mount {
            key: key.to_string(),
            target: target.to_path_buf(),
            why: e.to_string(),
        })?;
        mount_all(&mounts::Kernel, key, &mounts, target)
    }

    /// Removes the workspace's snapshot, then its lease.
    pub async fn remove_workspace(&self, s: WorkspaceSnapshot) -> Result<(), ContainerdError> {
        self.remove_snapshot(&s.key).await?;
        self.delete_lease(&s.lease).await
    }
}

/// Mounts a snapshot's mounts at `target`, in order (the overlayfs
/// snapshotter gives one).
fn mount_all(
    sys: &dyn MountSys,
    key: &str,
    list: &[Mount],
    target: &Path,
) -> Result<(), ContainerdError> {
    let fail = |why: String| ContainerdError::Mount {
        key: key.to_string(),
        target: target.to_path_buf(),
        why,
    };
    if list.is_empty() {
        return Err(fail("containerd returned no mounts".into()));
    }
    for m in list {
        if !m.target.is_empty() {
            return Err(fail(format!(
                "a mount at sub-path {:?} is not supported",
                m.target
            )));
        }
        let plan = mounts::plan(&m.r#type, &m.source, &m.options).map_err(&fail)?;
        sys.mount(&plan, target).map_err(|e| fail(e.to_string()))?;
    }
    tracing::info!(key, target = %target.display(), "rootfs mounted from a containerd snapshot");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<mounts::MountPlan>>);

    impl MountSys for Recorder {
        fn mount(&self, plan: &mounts::MountPlan, _: &Path) -> std::io::Result<()> {
            self.0.lock().unwrap().push(plan.clone());
            Ok(())
        }
    }

    fn mount(kind: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: "overlay".into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn mounts_each_in_order() {
        let rec = Recorder::default();
        mount_all(
            &rec,
            "k",
            &[mount(
                "overlay",
                &["lowerdir=/a", "upperdir=/u", "workdir=/w"],
            )],
            Path::new("/t"),
        )
        .unwrap();
        let calls = rec.0.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].data, "lowerdir=/a,upperdir=/u,workdir=/w");
    }

    #[test]
    fn unsupported_mounts_fail_before_any_syscall() {
        let rec = Recorder::default();
        let e = mount_all(&rec, "k", &[mount("tmpfs", &[])], Path::new("/t")).unwrap_err();
        assert!(e.to_string().contains("\"tmpfs\" is not supported"), "{e}");
        assert!(mount_all(&rec, "k", &[], Path::new("/t")).is_err());
        assert!(rec.0.lock().unwrap().is_empty());
    }
}
