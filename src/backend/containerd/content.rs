//! containerd's content store: what it has, reading small blobs (verified),
//! and streaming a blob into it (`Content.Write`, verified by cvmd as the
//! bytes pass and by containerd at commit).

use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, Info, InfoRequest, ReadContentRequest, Resource,
    UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use super::{Containerd, ContainerdError};
use crate::digest::Digest;
use crate::registry::RegistryError;

/// Manifests and configs are read whole; nothing larger is believed.
const MAX_SMALL_BLOB: usize = 4 << 20;

impl Containerd {
    /// Whether containerd has `digest`, which from now on `lease` holds.
    /// Content the node already has may belong to nothing: an interrupted
    /// pull's, whose lease went. Looked up without a hold, containerd's GC
    /// could delete it before this pull labels or uses it ("labelling
    /// content ...: not found" on the pull after a stopped one). Held
    /// first, it is either gone already (and written again) or kept.
    pub(super) async fn has_held_content(
        &self,
        lease: &str,
        digest: &Digest,
    ) -> Result<bool, ContainerdError> {
        let request = AddResourceRequest {
            id: lease.to_string(),
            resource: Some(Resource {
                id: digest.to_string(),
                r#type: "content".into(),
            }),
        };
        LeasesClient::new(self.channel.clone())
            .add_resource(self.req(request, None))
            .await
            .map_err(self.failed(&format!("holding content {digest} under lease {lease}")))?;
        self.has_content(digest).await
    }

    async fn has_content(&self, digest: &Digest) -> Result<bool, ContainerdError> {
        let request = InfoRequest {
            digest: digest.to_string(),
        };
        match ContentClient::new(self.channel.clone())
            .info(self.req(request, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.failed(&format!("looking up content {digest}"))(s)),
        }
    }

    /// Sets `labels` on existing content, leaving its other labels alone.
    pub(super) async fn set_labels(
        &self,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        ContentClient::new(self.channel.clone())
            .update(self.req(request, None))
            .await
            .map_err(self.failed(&format!("labelling content {digest}")))?;
        Ok(())
    }

    /// A small blob read whole, or None when containerd lacks it; checked
    /// against its digest.
    pub(super) async fn read_small(
        &self,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, ContainerdError> {
        let what = format!("reading content {digest}");
        let request = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = match ContentClient::new(self.channel.clone())
            .read(self.req(request, None))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(self.failed(&what)(s)),
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(self.failed(&what))? {
            out.extend_from_slice(&chunk.data);
            if out.len() > MAX_SMALL_BLOB {
                return Err(ContainerdError::Invalid {
                    what: format!("content {digest}"),
                    why: format!(
                        "larger than the {MAX_SMALL_BLOB} bytes a manifest or config may have"
                    ),
                });
            }
        }
        if &Digest::of(&out) != digest {
            return Err(ContainerdError::Invalid {
                what: format!("content {digest}"),
                why: "its bytes do not match its digest".into(),
            });
        }
        Ok(Some(out))
    }

    /// Streams `body` into the content store as `digest` of `size` bytes,
    /// committed with `labels` under `lease`. `on_bytes` hears the running
    /// total. Content containerd already has counts as written.
    pub(super) async fn write(
        &self,
        lease: &str,
        digest: &Digest,
        size: u64,
        labels: HashMap<String, String>,
        mut body: impl Stream<Item = Result<Bytes, ContainerdError>> + Unpin + Send,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), ContainerdError> {
        let what = format!("writing content {digest}");
        // Unique per process: two cvmd writing the same blob each get their
        // own ingest (containerd locks a ref), and the lease drops a dead
        // one's leftovers.
        let reference = format!("cvmd-{}-{}", std::process::id(), digest.hex());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(8);
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let message = |action: WriteAction, offset: u64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total: i64::try_from(size).unwrap_or(i64::MAX),
            expected: digest.to_string(),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
            data,
            labels: HashMap::new(),
        };
        let closed = || ContainerdError::Gone {
            socket: self.socket.display().to_string(),
            what: what.clone(),
            why: "the write stream closed".into(),
        };
        let feed = async {
            let mut hasher = Sha256::new();
            let mut offset = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                let at = offset;
                offset += chunk.len() as u64;
                if offset > size {
                    return Err(RegistryError::SizeMismatch {
                        what: format!("blob {digest}"),
                        expected: size,
                        actual: offset,
                    }
                    .into());
                }
                tx.send(message(WriteAction::Write, at, chunk.to_vec()))
                    .await
                    .map_err(|_| closed())?;
                on_bytes(offset);
            }
            if offset != size {
                return Err(RegistryError::SizeMismatch {
                    what: format!("blob {digest}"),
                    expected: size,
                    actual: offset,
                }
                .into());
            }
            let actual = Digest::from_hasher(hasher);
            if &actual != digest {
                return Err(RegistryError::DigestMismatch {
                    what: format!("blob {digest}"),
                    expected: digest.clone(),
                    actual,
                }
                .into());
            }
            let mut commit = message(WriteAction::Commit, offset, Vec::new());
            commit.labels = labels;
            tx.send(commit).await.map_err(|_| closed())?;
            Ok::<(), ContainerdError>(())
        };
        let answers = async {
            let mut responses = ContentClient::new(self.channel.clone())
                .write(self.req(requests, Some(lease)))
                .await
                .map_err(self.failed(&what))?
                .into_inner();
            // containerd answers every request; reading them keeps the
            // stream flowing, and the commit's answer ends it.
            loop {
                match responses.message().await {
                    Ok(Some(r)) if r.action == WriteAction::Commit as i32 => return Ok(()),
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(closed()),
                    Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                    Err(s) => return Err(self.failed(&what)(s)),
                }
            }
        };
        let result = tokio::try_join!(feed, answers).map(|_| ());
        if result.is_err() {
            let request = AbortRequest {
                r#ref: reference.clone(),
            };
            let _ = ContentClient::new(self.channel.clone())
                .abort(self.req(request, Some(lease)))
                .await;
        }
        result
    }

    /// [`Self::write`] of bytes held in memory (manifests, configs).
    pub(super) async fn write_bytes(
        &self,
        lease: &str,
        digest: &Digest,
        bytes: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let size = bytes.len() as u64;
        let body = futures_util::stream::iter([Ok(bytes)]);
        self.write(lease, digest, size, labels, body, &|_| {}).await
    }
}
