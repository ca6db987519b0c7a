//! Directory mode and times kept until the layer ends (creating a child
//! updates the parent's mtime; a 0555 mode would block an unprivileged
//! unpack from writing the children), in bounded memory.
//!
//! Kept by identity, so a directory named again (`./` a million times)
//! replaces its own entry, holding only what the final pass sets (mode and
//! times; xattrs were set at once), within a byte budget.

use std::collections::HashMap;

use super::limits::Broke;
use super::meta::Meta;
use super::path::CleanPath;

/// Counted per directory beside its path: the map slot and the metadata.
const ENTRY_COST: u64 = 128;

pub(super) struct DeferredDir {
    pub path: CleanPath,
    /// (st_dev, st_ino) when created, so the final pass never applies the
    /// metadata to whatever a later entry put at that name.
    pub id: (u64, u64),
    pub meta: Meta,
}

pub(super) struct Deferred {
    dirs: HashMap<(u64, u64), DeferredDir>,
    bytes: u64,
    limit: u64,
}

impl Deferred {
    pub(super) fn new(limit: u64) -> Self {
        Self {
            dirs: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Keeps `meta`'s mode and times for the directory `id` at `path`; a
    /// later entry for the same directory replaces the earlier (the last
    /// one wins, as when each was applied in turn).
    pub(super) fn add(
        &mut self,
        path: &CleanPath,
        id: (u64, u64),
        meta: &Meta,
    ) -> Result<(), Broke> {
        if !self.dirs.contains_key(&id) {
            let cost = path.to_relative().len() as u64 + ENTRY_COST;
            if self.bytes + cost > self.limit {
                return Err(Broke::DeferredDirs { limit: self.limit });
            }
            self.bytes += cost;
        }
        let kept = Meta {
            xattrs: Vec::new(),
            dropped_example: None,
            ..meta.clone()
        };
        self.dirs.insert(
            id,
            DeferredDir {
                path: path.clone(),
                id,
                meta: kept,
            },
        );
        Ok(())
    }

    /// All of them, in no particular order (setting a dir's times does not
    /// touch its parent's).
    pub(super) fn take(&mut self) -> impl Iterator<Item = DeferredDir> {
        self.bytes = 0;
        std::mem::take(&mut self.dirs).into_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode,
            mtime: (1, 0),
            xattrs: vec![(b"user.big".to_vec(), vec![0; 60 << 10])],
            dropped: 0,
            dropped_example: None,
        }
    }

    #[test]
    fn a_directory_named_again_replaces_its_entry() {
        let mut d = Deferred::new(1000);
        let root = CleanPath::parse(b"./").unwrap();
        for mode in 0..100_000 {
            d.add(&root, (1, 2), &meta(mode)).unwrap();
        }
        let kept: Vec<_> = d.take().collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].meta.mode, 99_999, "the last one wins");
        assert!(kept[0].meta.xattrs.is_empty(), "xattrs are not kept");
    }

    #[test]
    fn distinct_directories_are_bounded_in_bytes() {
        let mut d = Deferred::new(1000);
        let mut added = 0;
        let err = loop {
            let path = CleanPath::parse(format!("dir{added}").as_bytes()).unwrap();
            match d.add(&path, (1, added), &meta(0o755)) {
                Ok(()) => added += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, Broke::DeferredDirs { limit: 1000 });
        assert_eq!(added, 1000 / (4 + ENTRY_COST));
    }
}
