//! Read-ahead: which chunks to fetch beside the one a read needs.
//!
//! A boot reads hundreds of small files, mostly a directory's files one
//! after another, and a layer's writer puts a directory's files next to
//! each other in the blob. One request per chunk costs a round trip each;
//! fetching the chunks that follow the missing one in the blob, in the
//! same request, turns most of those later reads into cache hits.

use crate::tree::{Chunk, Kind, Tree};

/// At most this many chunks beside the needed one per run: each is held
/// by its lock file (an open file) until it is stored.
pub(crate) const MAX_NEIGHBOURS: usize = 128;

/// Every chunk of a tree in blob order, built once at mount.
#[derive(Debug)]
pub(crate) struct BlobOrder {
    /// (index into `tree.nodes`, index into the file's chunks), sorted by
    /// the chunk's `(blob_offset, inner_offset)`.
    order: Vec<(u32, u32)>,
}

/// A chunk found in blob order, and where it belongs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed<'t> {
    pub chunk: &'t Chunk,
    pub ino: u64,
    /// Its index among its file's chunks, and how many the file has.
    pub index: usize,
    pub of: usize,
}

impl BlobOrder {
    pub fn new(tree: &Tree) -> Self {
        let mut order = Vec::new();
        for (n, node) in tree.nodes.iter().enumerate() {
            if let Kind::File { chunks, .. } = &node.kind {
                let n = u32::try_from(n).expect("fewer than 2^32 inodes");
                order.extend(
                    (0..chunks.len())
                        .map(|c| (n, u32::try_from(c).expect("fewer than 2^32 chunks a file"))),
                );
            }
        }
        let key = |&(n, c): &(u32, u32)| {
            let c = chunk_at(tree, n, c).chunk;
            (c.blob_offset, c.inner_offset)
        };
        order.sort_by_cached_key(key);
        BlobOrder { order }
    }

    /// The chunks whose compressed spans lie within `budget` bytes of the
    /// blob from the start of `needed`'s span (or within `needed`'s own
    /// span, if that is longer), in blob order, `needed` among them: the
    /// span of a request that fetches `needed` and its neighbours is
    /// bounded by `max(budget, needed.compressed_len)`. Chunks sharing
    /// `needed`'s gzip member (same `blob_offset`) come with it, even those
    /// before it in the member.
    pub fn run<'a>(
        &'a self,
        tree: &'a Tree,
        needed: &Chunk,
        budget: u64,
    ) -> impl Iterator<Item = Placed<'a>> + 'a {
        let start = needed.blob_offset;
        let limit = start.saturating_add(budget.max(needed.compressed_len));
        let first = self
            .order
            .partition_point(|&(n, c)| chunk_at(tree, n, c).chunk.blob_offset < start);
        self.order[first..]
            .iter()
            .map(move |&(n, c)| chunk_at(tree, n, c))
            .take_while(move |p| {
                p.chunk
                    .blob_offset
                    .checked_add(p.chunk.compressed_len)
                    .is_some_and(|end| end <= limit)
            })
    }
}

fn chunk_at(tree: &Tree, node: u32, chunk: u32) -> Placed<'_> {
    let n = usize::try_from(node).expect("u32 fits usize");
    let i = usize::try_from(chunk).expect("u32 fits usize");
    let Kind::File { chunks, .. } = &tree.nodes[n].kind else {
        unreachable!("the blob order holds files' chunks only")
    };
    Placed {
        chunk: &chunks[i],
        ino: u64::from(node) + 1,
        index: i,
        of: chunks.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, Meta, TreeBuilder};
    use cvmd_digest::Digest;

    /// A file of one chunk per `(blob_offset, compressed_len, inner_offset)`.
    fn file(path: &str, spans: &[(u64, u64, u64)]) -> Entry {
        let chunks: Vec<Chunk> = spans
            .iter()
            .enumerate()
            .map(|(i, &(blob_offset, compressed_len, inner_offset))| Chunk {
                file_offset: i as u64 * 10,
                size: 10,
                blob_offset,
                compressed_len,
                inner_offset,
                digest: Digest::of(format!("{path}{i}").as_bytes()),
            })
            .collect();
        Entry {
            path: path.into(),
            kind: Kind::File {
                size: chunks.len() as u64 * 10,
                chunks,
            },
            meta: Meta::default(),
        }
    }

    fn names<'a>(tree: &Tree, run: impl Iterator<Item = Placed<'a>>) -> Vec<String> {
        run.map(|p| {
            let path = tree.node(p.ino).unwrap().path.display().to_string();
            format!("{path}#{}", p.index)
        })
        .collect()
    }

    #[test]
    fn a_run_follows_blob_order_across_files_within_the_budget() {
        let mut b = TreeBuilder::new();
        // Added out of blob order: the order comes from the offsets.
        b.add(file("c", &[(300, 100, 0)])).unwrap();
        b.add(file("a", &[(0, 100, 0), (100, 100, 0)])).unwrap();
        b.add(file("b", &[(200, 50, 0)])).unwrap();
        b.add(file("d", &[(400, 600, 0)])).unwrap();
        let tree = b.build();
        let order = BlobOrder::new(&tree);
        let a0 = match &tree.node(3).unwrap().kind {
            Kind::File { chunks, .. } => chunks[0].clone(),
            _ => unreachable!(),
        };
        assert_eq!(
            names(&tree, order.run(&tree, &a0, 400)),
            ["a#0", "a#1", "b#0", "c#0"]
        );
        assert_eq!(names(&tree, order.run(&tree, &a0, 249)), ["a#0", "a#1"]);
        // A budget below the needed chunk's span still yields that span.
        assert_eq!(names(&tree, order.run(&tree, &a0, 0)), ["a#0"]);
        let d = match &tree.node(5).unwrap().kind {
            Kind::File { chunks, .. } => chunks[0].clone(),
            _ => unreachable!(),
        };
        assert_eq!(names(&tree, order.run(&tree, &d, 100)), ["d#0"]);
    }

    #[test]
    fn chunks_of_one_gzip_member_come_together() {
        let mut b = TreeBuilder::new();
        // Two files' chunks in one member at 0 (by inner offset), then
        // one in the next member.
        b.add(file("y", &[(0, 80, 40)])).unwrap();
        b.add(file("x", &[(0, 80, 0)])).unwrap();
        b.add(file("z", &[(80, 20, 0)])).unwrap();
        let tree = b.build();
        let order = BlobOrder::new(&tree);
        let y = match &tree.node(2).unwrap().kind {
            Kind::File { chunks, .. } => chunks[0].clone(),
            _ => unreachable!(),
        };
        // The member is one span: x comes along although it is before y.
        assert_eq!(names(&tree, order.run(&tree, &y, 0)), ["x#0", "y#0"]);
        assert_eq!(
            names(&tree, order.run(&tree, &y, 100)),
            ["x#0", "y#0", "z#0"]
        );
    }
}
