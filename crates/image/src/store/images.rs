//! Which images the node has: one small record per pulled reference,
//! naming its manifest, config, blobs and layers. Garbage collection keeps
//! what a record names; the record's mtime is its last use.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, sync_dir, StoreError};
use crate::registry::manifest::{ImageConfigHead, ImageManifest};
use crate::registry::Reference;
use cvmd_digest::Digest;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordLayer {
    pub blob: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The reference as it was asked for (normalised).
    pub reference: String,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<RecordLayer>,
}

impl ImageRecord {
    /// The layers' diff_ids, bottom first: what a lease names.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    pub fn new(
        reference: &Reference,
        manifest_digest: &Digest,
        manifest: &ImageManifest,
        config: &ImageConfigHead,
    ) -> Self {
        ImageRecord {
            reference: reference.to_string(),
            manifest: manifest_digest.clone(),
            config: manifest.config.digest.clone(),
            layers: manifest
                .layers
                .iter()
                .zip(&config.rootfs.diff_ids)
                .map(|(l, d)| RecordLayer {
                    blob: l.digest.clone(),
                    diff_id: d.clone(),
                    size: l.size,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageIndex {
    dir: PathBuf,
}

impl ImageIndex {
    pub fn open(cache_dir: &Path) -> Result<Self, StoreError> {
        let dir = cache_dir.join("images");
        super::create_private_dir(&dir)?;
        Ok(ImageIndex { dir })
    }

    fn path(&self, reference: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// Writes (atomically) or refreshes the record of a reference.
    pub fn save(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.path(&record.reference);
        let json = serde_json::to_vec_pretty(record).expect("plain struct");
        // A temp name unique on the node (every cvmd is PID 1 of its own
        // pod, so not the pid); removed if anything fails.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut tmp = tempfile::Builder::new()
                .prefix(".record.")
                .tempfile_in(&self.dir)?;
            tmp.write_all(&json)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            sync_dir(&self.dir)
        };
        write().map_err(io_err(&path))
    }

    pub fn load(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.path(reference);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Marks a record as used now (for least-recently-used eviction).
    pub fn touch(&self, reference: &str) {
        let _ = std::fs::File::options()
            .append(true)
            .open(self.path(reference))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }

    /// Every record with its last use, oldest first. Unreadable records
    /// are skipped: they name nothing, so gc treats their content as free.
    pub fn list(&self) -> Result<Vec<(ImageRecord, std::time::SystemTime, PathBuf)>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
                tracing::warn!(path = %path.display(), "ignoring an unreadable image record");
                continue;
            };
            let used = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            out.push((record, used, path));
        }
        out.sort_by_key(|(_, used, _)| *used);
        Ok(out)
    }

    pub fn remove(&self, reference: &str) -> Result<(), StoreError> {
        let path = self.path(reference);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }
}
