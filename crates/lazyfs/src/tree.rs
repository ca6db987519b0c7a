//! The tree a lazy layer serves: every entry's metadata is known up front
//! (from the layer's table of contents), only file bytes come later, as
//! chunks.
//!
//! The caller has already validated its input, but the builder still
//! refuses what would make the served tree wrong: a path outside the root,
//! a duplicate, a missing or non-directory parent, a hardlink to nothing or
//! to a directory, chunks that do not tile the file.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use cvmd_digest::Digest;

/// The largest chunk a tree may hold: a chunk is held whole in memory
/// while it is fetched and verified, so a hostile table of contents must
/// not make one huge (eStargz writers cut files into 4 MiB chunks or less).
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// Inode number of the root directory (FUSE's fixed root id).
pub(crate) const ROOT: u64 = 1;

/// One span of a file's bytes, as stored in the layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk's bytes start in the file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub size: u64,
    /// Where the compressed span that holds the chunk starts in the blob.
    pub blob_offset: u64,
    /// Length of that compressed span.
    pub compressed_len: u64,
    /// Where the chunk starts in the span's uncompressed stream.
    pub inner_offset: u64,
    /// sha256 of the chunk's uncompressed bytes; also its name in the cache.
    pub digest: Digest,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file; `chunks` are sorted by offset and tile `0..size`.
    File {
        size: u64,
        chunks: Vec<Chunk>,
    },
    Symlink {
        target: PathBuf,
    },
    /// A character device; 0:0 is an overlay whiteout.
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// Metadata of an entry, as the layer records it (owners unshifted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, setuid, setgid and sticky (`0o7777`); type bits are
    /// ignored (the [`Kind`] says the type).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// Extended attributes by name, e.g. `trusted.overlay.opaque` = `y`
    /// on an opaque directory.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Default for Meta {
    /// The root's metadata when the layer does not record it: 0755 root:root.
    fn default() -> Self {
        Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: SystemTime::UNIX_EPOCH,
            xattrs: Vec::new(),
        }
    }
}

/// An entry to add: a path relative to the layer root (`""` or `"."` is
/// the root itself), what it is, and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: Kind,
    pub meta: Meta,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("lazy layer entry {0:?} is not a plain relative path inside the layer (absolute, `..`, `.` or empty component)")]
    BadPath(PathBuf),
    #[error("lazy layer entry {0:?} appears twice")]
    Duplicate(PathBuf),
    #[error("lazy layer entry {path:?} has no parent directory {parent:?} before it")]
    MissingParent { path: PathBuf, parent: PathBuf },
    #[error("lazy layer entry {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDir { path: PathBuf, parent: PathBuf },
    #[error("lazy layer hardlink {path:?} points to {target:?}, which is not an earlier non-directory entry")]
    BadHardlink { path: PathBuf, target: PathBuf },
    #[error(
        "lazy layer file {path:?}: its chunks do not tile its {size} bytes in order (at byte {at})"
    )]
    BadChunks { path: PathBuf, size: u64, at: u64 },
    #[error("lazy layer file {path:?}: its chunk at byte {at} is {size} bytes, over the limit of {MAX_CHUNK_SIZE} (rewrite the image with smaller chunks)")]
    ChunkTooBig { path: PathBuf, at: u64, size: u64 },
}

/// One inode of the built tree.
#[derive(Debug)]
pub(crate) struct Node {
    /// The first path that named it, for log lines and the backing dir.
    pub path: PathBuf,
    pub parent: u64,
    pub kind: Kind,
    pub meta: Meta,
    pub nlink: u32,
    /// Directories only: children sorted by name.
    pub children: Vec<(OsString, u64)>,
}

impl Node {
    pub fn child(&self, name: &OsStr) -> Option<u64> {
        self.children
            .binary_search_by(|(n, _)| n.as_os_str().cmp(name))
            .ok()
            .map(|i| self.children[i].1)
    }
}

/// A finished tree, ready to [`mount`](crate::mount).
#[derive(Debug)]
pub struct Tree {
    /// Index `ino - 1`.
    pub(crate) nodes: Vec<Node>,
}

impl Tree {
    pub(crate) fn node(&self, ino: u64) -> Option<&Node> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    /// How many inodes the tree has (hardlinks count once).
    pub fn inodes(&self) -> usize {
        self.nodes.len()
    }

    /// How many regular files it has.
    pub fn files(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.kind, Kind::File { .. }))
            .count()
    }

    /// Sum of the regular files' sizes.
    pub fn bytes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match n.kind {
                Kind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }
}

/// Builds a [`Tree`] from entries given parents first (the order of a tar
/// or a TOC).
#[derive(Debug)]
pub struct TreeBuilder {
    nodes: Vec<Node>,
    by_path: HashMap<PathBuf, u64>,
    root_set: bool,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeBuilder {
    /// A tree holding only the root, with [`Meta::default`] until an entry
    /// for the root replaces it.
    pub fn new() -> Self {
        TreeBuilder {
            nodes: vec![Node {
                path: PathBuf::new(),
                parent: ROOT,
                kind: Kind::Dir,
                meta: Meta::default(),
                nlink: 2,
                children: Vec::new(),
            }],
            by_path: HashMap::from([(PathBuf::new(), ROOT)]),
            root_set: false,
        }
    }

    /// Adds one entry; its parent must already be there.
    pub fn add(&mut self, entry: Entry) -> Result<(), TreeError> {
        let path = normalize(&entry.path)?;
        if path.as_os_str().is_empty() {
            if self.root_set || entry.kind != Kind::Dir {
                return Err(TreeError::Duplicate(entry.path));
            }
            self.root_set = true;
            self.nodes[0].meta = entry.meta;
            return Ok(());
        }
        if let Kind::File { size, chunks } = &entry.kind {
            check_chunks(&path, *size, chunks)?;
        }
        let (parent, name) = self.parent_of(&path)?;
        let ino = u64::try_from(self.nodes.len()).expect("inode count fits u64") + 1;
        let is_dir = entry.kind == Kind::Dir;
        self.nodes.push(Node {
            path: path.clone(),
            parent,
            kind: entry.kind,
            meta: entry.meta,
            nlink: if is_dir { 2 } else { 1 },
            children: Vec::new(),
        });
        self.link(parent, name, ino, is_dir);
        self.by_path.insert(path, ino);
        Ok(())
    }

    /// Adds `path` as another name of the earlier entry `target` (same
    /// inode, one more link).
    pub fn add_hardlink(
        &mut self,
        path: impl AsRef<Path>,
        target: impl AsRef<Path>,
    ) -> Result<(), TreeError> {
        let path = normalize(path.as_ref())?;
        let bad = || TreeError::BadHardlink {
            path: path.clone(),
            target: target.as_ref().to_path_buf(),
        };
        let target_path = normalize(target.as_ref()).map_err(|_| bad())?;
        let ino = *self.by_path.get(&target_path).ok_or_else(bad)?;
        if self.nodes[index(ino)].kind == Kind::Dir {
            return Err(bad());
        }
        if path.as_os_str().is_empty() {
            return Err(TreeError::Duplicate(path));
        }
        let (parent, name) = self.parent_of(&path)?;
        self.nodes[index(ino)].nlink += 1;
        self.link(parent, name, ino, false);
        self.by_path.insert(path, ino);
        Ok(())
    }

    /// The finished tree.
    pub fn build(mut self) -> Tree {
        for node in &mut self.nodes {
            node.children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Tree { nodes: self.nodes }
    }

    fn parent_of(&self, path: &Path) -> Result<(u64, OsString), TreeError> {
        if self.by_path.contains_key(path) {
            return Err(TreeError::Duplicate(path.to_path_buf()));
        }
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let Some(&parent) = self.by_path.get(parent_path) else {
            return Err(TreeError::MissingParent {
                path: path.to_path_buf(),
                parent: parent_path.to_path_buf(),
            });
        };
        if self.nodes[index(parent)].kind != Kind::Dir {
            return Err(TreeError::ParentNotDir {
                path: path.to_path_buf(),
                parent: parent_path.to_path_buf(),
            });
        }
        let name = path.file_name().expect("normalized path has a name");
        Ok((parent, name.to_os_string()))
    }

    fn link(&mut self, parent: u64, name: OsString, ino: u64, is_dir: bool) {
        let dir = &mut self.nodes[index(parent)];
        dir.children.push((name, ino));
        if is_dir {
            // A subdirectory's `..` links to its parent.
            dir.nlink += 1;
        }
    }
}

fn index(ino: u64) -> usize {
    usize::try_from(ino - 1).expect("inode numbers come from a Vec index")
}

/// `path` as plain normal components; `""` for the root.
fn normalize(path: &Path) -> Result<PathBuf, TreeError> {
    let mut out = PathBuf::new();
    let bytes = path.as_os_str().as_bytes();
    if bytes == b"." || bytes.is_empty() {
        return Ok(out);
    }
    if bytes.starts_with(b"/") || bytes.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(TreeError::BadPath(path.to_path_buf()));
    }
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            // `Path::components` drops inner `.`; a leading `./` is the
            // TOC's usual spelling and harmless.
            Component::CurDir => {}
            _ => return Err(TreeError::BadPath(path.to_path_buf())),
        }
    }
    Ok(out)
}

fn check_chunks(path: &Path, size: u64, chunks: &[Chunk]) -> Result<(), TreeError> {
    let mut at = 0u64;
    for c in chunks {
        if c.size > MAX_CHUNK_SIZE {
            return Err(TreeError::ChunkTooBig {
                path: path.to_path_buf(),
                at,
                size: c.size,
            });
        }
        if c.file_offset != at || c.size == 0 {
            return Err(TreeError::BadChunks {
                path: path.to_path_buf(),
                size,
                at,
            });
        }
        at = at.checked_add(c.size).ok_or(TreeError::BadChunks {
            path: path.to_path_buf(),
            size,
            at,
        })?;
    }
    if at != size {
        return Err(TreeError::BadChunks {
            path: path.to_path_buf(),
            size,
            at,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            meta: Meta::default(),
        }
    }

    fn file(path: &str, sizes: &[u64]) -> Entry {
        let mut at = 0;
        let chunks = sizes
            .iter()
            .map(|&size| {
                let c = Chunk {
                    file_offset: at,
                    size,
                    blob_offset: 0,
                    compressed_len: 0,
                    inner_offset: 0,
                    digest: Digest::of(&at.to_le_bytes()),
                };
                at += size;
                c
            })
            .collect();
        Entry {
            path: path.into(),
            kind: Kind::File { size: at, chunks },
            meta: Meta::default(),
        }
    }

    #[test]
    fn builds_dirs_files_and_hardlinks_with_link_counts() {
        let mut b = TreeBuilder::new();
        b.add(dir("./")).unwrap();
        b.add(dir("a")).unwrap();
        b.add(dir("a/b")).unwrap();
        b.add(file("a/f", &[3, 4])).unwrap();
        b.add_hardlink("a/b/g", "a/f").unwrap();
        let t = b.build();
        assert_eq!(t.inodes(), 4);
        assert_eq!(t.node(ROOT).unwrap().nlink, 3);
        let a = t.node(ROOT).unwrap().child(OsStr::new("a")).unwrap();
        assert_eq!(t.node(a).unwrap().nlink, 3);
        let f = t.node(a).unwrap().child(OsStr::new("f")).unwrap();
        assert_eq!(t.node(f).unwrap().nlink, 2);
        let b_ino = t.node(a).unwrap().child(OsStr::new("b")).unwrap();
        assert_eq!(t.node(b_ino).unwrap().child(OsStr::new("g")), Some(f));
        assert_eq!(t.bytes(), 7);
    }

    #[test]
    fn refuses_escapes_duplicates_and_orphans() {
        let mut b = TreeBuilder::new();
        for bad in ["../x", "/etc", "a/../../x"] {
            assert!(
                matches!(b.add(dir(bad)), Err(TreeError::BadPath(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            b.add(dir("a/b")),
            Err(TreeError::MissingParent { .. })
        ));
        b.add(file("f", &[1])).unwrap();
        assert!(matches!(
            b.add(file("f", &[1])),
            Err(TreeError::Duplicate(_))
        ));
        assert!(matches!(
            b.add(dir("f/x")),
            Err(TreeError::ParentNotDir { .. })
        ));
        b.add(dir("d")).unwrap();
        assert!(matches!(
            b.add_hardlink("h", "d"),
            Err(TreeError::BadHardlink { .. })
        ));
        assert!(matches!(
            b.add_hardlink("h", "nope"),
            Err(TreeError::BadHardlink { .. })
        ));
        b.add(dir(".")).unwrap();
        assert!(matches!(b.add(dir("")), Err(TreeError::Duplicate(_))));
    }

    #[test]
    fn refuses_chunks_that_do_not_tile_the_file() {
        let mut b = TreeBuilder::new();
        let mut e = file("f", &[2, 2]);
        if let Kind::File { chunks, .. } = &mut e.kind {
            chunks[1].file_offset = 1;
        }
        assert!(matches!(b.add(e), Err(TreeError::BadChunks { .. })));
        let mut e = file("g", &[2]);
        if let Kind::File { size, .. } = &mut e.kind {
            *size = 3;
        }
        assert!(matches!(b.add(e), Err(TreeError::BadChunks { .. })));
        b.add(file("empty", &[])).unwrap();
        assert!(matches!(
            b.add(file("huge", &[MAX_CHUNK_SIZE + 1])),
            Err(TreeError::ChunkTooBig { .. })
        ));
        b.add(file("max", &[MAX_CHUNK_SIZE])).unwrap();
    }
}
