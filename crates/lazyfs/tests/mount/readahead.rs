//! Read-ahead: a read that misses a chunk fetches the chunks after it in
//! the blob in the same request, and later reads of them hit the cache.

use super::*;

/// `n` small files of one chunk each (1000 bytes, spans of 500 in the fake
/// blob), in blob order: a directory of a boot's config files.
fn small_files(source: &FakeSource, n: usize) -> (Vec<String>, Vec<Entry>) {
    let names: Vec<String> = (0..n).map(|i| format!("etc/f{i:03}")).collect();
    let entries = names
        .iter()
        .enumerate()
        .map(|(i, name)| file(source, name, &pattern(1000, 500 + i as u64), 4096))
        .collect();
    (names, entries)
}

fn mount_small_files(
    source: &Arc<FakeSource>,
    n: usize,
    options: MountOptions,
) -> (Fixture, Vec<String>) {
    mount_small_files_on(source, n, None, options)
}

/// [`mount_small_files`] over the chunk cache in `cache_dir` (a node's,
/// shared with other mounts) when given.
fn mount_small_files_on(
    source: &Arc<FakeSource>,
    n: usize,
    cache_dir: Option<&Path>,
    options: MountOptions,
) -> (Fixture, Vec<String>) {
    let (names, entries) = small_files(source, n);
    let f = mount_tree(
        |b| {
            b.add(dir("etc")).unwrap();
            for e in entries {
                b.add(e).unwrap();
            }
        },
        source.clone(),
        cache_dir,
        options,
    );
    (f, names)
}

fn content(i: usize) -> Vec<u8> {
    pattern(1000, 500 + i as u64)
}

#[test]
fn reading_one_small_file_fetches_the_next_ones_in_one_request_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let (f, names) = mount_small_files(&source, 40, MountOptions::default());
    assert_eq!(fs::read(f.path(&names[0])).unwrap(), content(0));
    assert_eq!(
        *source.requests.lock().unwrap(),
        [(40, 40 * 500)],
        "one request for the first file and all 39 after it"
    );
    let stats = f.mnt.handle().stats();
    assert_eq!(stats.chunks_fetched, 40);
    assert_eq!(stats.chunks_read_ahead, 39);
    assert_eq!(stats.files_present, 40, "a stored neighbour is present");
    assert_eq!(cached_chunks(&f.tmp.path().join("cache")), 40);
    // Every other file now reads from the cache: no request at all.
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(f.path(n)).unwrap(), content(i), "{n}");
    }
    assert_eq!(source.requests.lock().unwrap().len(), 1);
    assert!(source.calls.lock().unwrap().values().all(|&n| n == 1));
    // f000 is in the kernel's page cache since the first read.
    assert_eq!(f.mnt.handle().stats().cache_hits, 39);
}

#[test]
fn a_run_stays_within_its_budget_and_skips_cached_chunks_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let (f, names) = mount_small_files(
        &source,
        20,
        MountOptions {
            readahead_bytes: 2000,
            ..MountOptions::default()
        },
    );
    // f005 first: it and the three after it fill 2000 bytes of spans.
    assert_eq!(fs::read(f.path(&names[5])).unwrap(), content(5));
    // f003 then: f003, f004, then f005..f008 are cached and left out.
    assert_eq!(fs::read(f.path(&names[3])).unwrap(), content(3));
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(f.path(n)).unwrap(), content(i), "{n}");
    }
    let requests = source.requests.lock().unwrap().clone();
    assert_eq!(requests[..2], [(4, 2000), (2, 1000)], "{requests:?}");
    assert!(
        requests.iter().all(|&(_, span)| span <= 2000),
        "{requests:?}"
    );
    // Every chunk fetched once: then f000..f002, f009..f012, f013..f016
    // and f017..f019.
    assert_eq!(requests.iter().map(|r| r.0).sum::<usize>(), 20);
    assert!(source.calls.lock().unwrap().values().all(|&n| n == 1));
    assert_eq!(
        requests[2..],
        [(3, 1500), (4, 2000), (4, 2000), (3, 1500)],
        "{requests:?}"
    );
}

/// A cached chunk in the middle of a run ends it: the request never
/// spans bytes the node has (or another read is fetching), so no byte of
/// the blob is fetched twice on one node.
#[test]
fn a_run_stops_before_a_chunk_the_node_has_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let cache = tempfile::tempdir().unwrap();
    let mount = |readahead_bytes| {
        let options = MountOptions {
            readahead_bytes,
            ..MountOptions::default()
        };
        mount_small_files_on(&source, 8, Some(cache.path()), options)
    };
    {
        // f004 alone into the node's cache.
        let (f, names) = mount(0);
        assert_eq!(fs::read(f.path(&names[4])).unwrap(), content(4));
    }
    source.requests.lock().unwrap().clear();
    let (f, names) = mount(2000);
    // f003's run would reach f006; it stops at f004, which the node has.
    assert_eq!(fs::read(f.path(&names[3])).unwrap(), content(3));
    assert_eq!(source.requests.lock().unwrap().clone(), [(1, 500)]);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(f.path(n)).unwrap(), content(i), "{n}");
    }
    assert!(source.calls.lock().unwrap().values().all(|&n| n == 1));
}

#[test]
fn readahead_zero_fetches_one_chunk_per_request_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let (f, names) = mount_small_files(
        &source,
        10,
        MountOptions {
            readahead_bytes: 0,
            ..MountOptions::default()
        },
    );
    assert_eq!(fs::read(f.path(&names[0])).unwrap(), content(0));
    assert_eq!(*source.requests.lock().unwrap(), [(1, 500)]);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(f.path(n)).unwrap(), content(i));
    }
    let requests = source.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 10);
    assert!(requests.iter().all(|&r| r == (1, 500)), "{requests:?}");
    assert_eq!(f.mnt.handle().stats().chunks_read_ahead, 0);
}

#[test]
fn a_corrupted_neighbour_is_not_cached_and_the_read_succeeds_needs_root_and_fuse() {
    require!(prereq::fuse());
    logs();
    let source = Arc::new(FakeSource::default());
    let (f, names) = mount_small_files(&source, 5, MountOptions::default());
    // f002's bytes change on the way.
    let bad = Digest::of(&content(2));
    source
        .chunks
        .lock()
        .unwrap()
        .insert(bad.clone(), pattern(1000, 9999));
    assert_eq!(fs::read(f.path(&names[0])).unwrap(), content(0));
    let cache = f.tmp.path().join("cache");
    assert!(!cache.join("sha256").join(bad.hex()).exists());
    assert_eq!(cached_chunks(&cache), 4, "the neighbours after it are kept");
    let lines = log_lines_with(&bad.short());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("read-ahead of etc/f002")
            && lines[0].contains("do not match"),
        "{lines:?}"
    );
    let stats = f.mnt.handle().stats();
    assert_eq!((stats.failed_reads, stats.chunks_read_ahead), (0, 3));
    // Reading the file itself asks again (the kernel may retry), and is
    // EIO; the others were fetched once.
    let err = fs::read(f.path(&names[2])).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    for i in [1, 3, 4] {
        assert_eq!(fs::read(f.path(&names[i])).unwrap(), content(i));
    }
    let calls = source.calls.lock().unwrap();
    assert!(calls[&bad] >= 2, "{calls:?}");
    assert!(calls.iter().all(|(d, &n)| *d == bad || n == 1), "{calls:?}");
}

#[test]
fn a_neighbour_another_read_is_fetching_is_left_to_it_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource {
        delay: Duration::from_millis(300),
        ..FakeSource::default()
    });
    let (f, names) = mount_small_files(&source, 6, MountOptions::default());
    std::thread::scope(|s| {
        // f003's read holds its chunk (and takes f004, f005 along) while
        // f000's read looks for neighbours: it leaves f003..f005 out.
        s.spawn(|| assert_eq!(fs::read(f.path(&names[3])).unwrap(), content(3)));
        std::thread::sleep(Duration::from_millis(100));
        s.spawn(|| assert_eq!(fs::read(f.path(&names[0])).unwrap(), content(0)));
    });
    let mut requests = source.requests.lock().unwrap().clone();
    requests.sort();
    assert_eq!(requests, [(3, 1500), (3, 1500)]);
    assert!(source.calls.lock().unwrap().values().all(|&n| n == 1));
    for (i, n) in names.iter().enumerate() {
        assert_eq!(fs::read(f.path(n)).unwrap(), content(i));
    }
    assert_eq!(source.requests.lock().unwrap().len(), 2);
}
