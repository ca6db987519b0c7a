//! Real FUSE mounts of lazy trees, read with std::fs and a kernel overlay.
//! The chunk source is an in-memory map: the seam the HTTP source plugs
//! into, faked here to count and break fetches.

mod prereq;
mod readahead;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use cvmd_digest::Digest;
use cvmd_lazyfs::{
    detach_stale, mount, Chunk, ChunkCache, ChunkSource, Entry, FetchError, Kind, Meta,
    MountOptions, Mounted, TreeBuilder,
};

/// Serves chunks from memory; counts fetches per chunk, and requests
/// (a read-ahead run is one).
#[derive(Default)]
struct FakeSource {
    chunks: Mutex<HashMap<Digest, Vec<u8>>>,
    calls: Mutex<HashMap<Digest, usize>>,
    /// Per request, the chunks it asked for and the blob span it covered.
    requests: Mutex<Vec<(usize, u64)>>,
    /// Where the next chunk added goes in the fake blob.
    blob_end: AtomicU64,
    delay: Duration,
    fail: Option<&'static str>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl ChunkSource for FakeSource {
    fn fetch(&self, chunk: &Chunk) -> Result<Vec<u8>, FetchError> {
        self.fetch_run_vec(std::slice::from_ref(chunk))
            .pop()
            .unwrap()
    }

    fn fetch_run(
        &self,
        chunks: &[Chunk],
        each: &mut dyn FnMut(usize, Result<Vec<u8>, FetchError>),
    ) {
        for (i, got) in self.fetch_run_vec(chunks).into_iter().enumerate() {
            each(i, got);
        }
    }
}

impl FakeSource {
    /// One request (one delay) for `chunks`.
    fn fetch_run_vec(&self, chunks: &[Chunk]) -> Vec<Result<Vec<u8>, FetchError>> {
        let start = chunks.iter().map(|c| c.blob_offset).min().unwrap();
        let end = chunks
            .iter()
            .map(|c| c.blob_offset + c.compressed_len)
            .max()
            .unwrap();
        self.requests
            .lock()
            .unwrap()
            .push((chunks.len(), end - start));
        for c in chunks {
            *self
                .calls
                .lock()
                .unwrap()
                .entry(c.digest.clone())
                .or_default() += 1;
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        chunks
            .iter()
            .map(|c| match self.fail {
                Some(why) => Err(FetchError::msg(why)),
                None => self
                    .chunks
                    .lock()
                    .unwrap()
                    .get(&c.digest)
                    .cloned()
                    .ok_or_else(|| FetchError::msg("no such chunk")),
            })
            .collect()
    }

    fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 1000,
        gid: 1001,
        mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        xattrs: Vec::new(),
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: Kind::Dir,
        meta: meta(0o755),
    }
}

/// A file entry of `content` cut into `chunk_size` chunks, whose bytes go
/// into `source`; each chunk's span (half its size) follows the previous
/// chunk's in the fake blob, as a layer writer lays them out.
fn file(source: &FakeSource, path: &str, content: &[u8], chunk_size: usize) -> Entry {
    let mut chunks = Vec::new();
    for (i, piece) in content.chunks(chunk_size).enumerate() {
        let digest = Digest::of(piece);
        source
            .chunks
            .lock()
            .unwrap()
            .insert(digest.clone(), piece.to_vec());
        let compressed_len = piece.len() as u64 / 2;
        chunks.push(Chunk {
            file_offset: (i * chunk_size) as u64,
            size: piece.len() as u64,
            blob_offset: source.blob_end.fetch_add(compressed_len, Ordering::SeqCst),
            compressed_len,
            inner_offset: 0,
            digest,
        });
    }
    Entry {
        path: path.into(),
        kind: Kind::File {
            size: content.len() as u64,
            chunks,
        },
        meta: meta(0o644),
    }
}

/// Deterministic bytes with no period, so no two chunks share a digest.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Everything a mounted test needs kept alive.
struct Fixture {
    tmp: tempfile::TempDir,
    mnt: Mounted,
}

impl Fixture {
    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.mountpoint().join(rel)
    }
}

fn mount_tree(
    build: impl FnOnce(&mut TreeBuilder),
    source: Arc<FakeSource>,
    cache_dir: Option<&Path>,
    options: MountOptions,
) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = TreeBuilder::new();
    build(&mut b);
    let cache_dir = cache_dir.map_or_else(|| tmp.path().join("cache"), Path::to_path_buf);
    let cache = Arc::new(ChunkCache::open(cache_dir).unwrap());
    let mp = tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let mnt = mount(b.build(), source, cache, &options, &mp).unwrap();
    Fixture { tmp, mnt }
}

/// The warn lines of every test (the read workers log from their own
/// threads, so a per-thread subscriber would miss them).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(buf))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_with(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn cached_chunks(cache: &Path) -> usize {
    fs::read_dir(cache.join("sha256"))
        .map(|d| {
            d.filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn serves_metadata_links_xattrs_and_contents_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let big = pattern(300_000, 7);
    let f = mount_tree(
        |b| {
            b.add(Entry {
                path: "".into(),
                kind: Kind::Dir,
                meta: meta(0o711),
            })
            .unwrap();
            b.add(dir("etc")).unwrap();
            let mut e = file(&source, "etc/big", &big, 65_536);
            e.meta.xattrs = vec![
                (OsString::from("user.note"), b"hello".to_vec()),
                (OsString::from("security.capability"), vec![1, 2, 3]),
            ];
            b.add(e).unwrap();
            let mut s = file(&source, "sudo", b"#!/bin/true\n", 4);
            s.meta.mode = 0o4755;
            b.add(s).unwrap();
            b.add(file(&source, "empty", b"", 4)).unwrap();
            b.add_hardlink("etc/big-link", "etc/big").unwrap();
            b.add(Entry {
                path: "etc/link".into(),
                kind: Kind::Symlink {
                    target: "big".into(),
                },
                meta: meta(0o777),
            })
            .unwrap();
            b.add(Entry {
                path: "null".into(),
                kind: Kind::CharDev { major: 1, minor: 3 },
                meta: meta(0o666),
            })
            .unwrap();
            b.add(Entry {
                path: "fifo".into(),
                kind: Kind::Fifo,
                meta: meta(0o600),
            })
            .unwrap();
            let mut t = dir("tmp");
            t.meta.mode = 0o1777;
            b.add(t).unwrap();
        },
        source.clone(),
        None,
        MountOptions::default(),
    );

    let root = fs::metadata(f.path("")).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o711);
    let mut names: Vec<_> = fs::read_dir(f.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "etc", "fifo", "null", "sudo", "tmp"]);
    // Readdir's types, and ".." of a subdir.
    let etc: HashMap<_, _> = fs::read_dir(f.path("etc"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.file_type().unwrap())
        })
        .collect();
    assert!(etc["link"].is_symlink() && etc["big"].is_file() && etc.len() == 3);
    assert_eq!(fs::metadata(f.path("etc/..")).unwrap().ino(), root.ino());

    let big_meta = fs::metadata(f.path("etc/big")).unwrap();
    assert_eq!(big_meta.len(), big.len() as u64);
    assert_eq!((big_meta.uid(), big_meta.gid()), (1000, 1001));
    assert_eq!(big_meta.mode(), libc::S_IFREG | 0o644);
    assert_eq!(big_meta.mtime(), 1_700_000_000);
    assert_eq!(big_meta.nlink(), 2);
    let link_meta = fs::metadata(f.path("etc/big-link")).unwrap();
    assert_eq!(
        link_meta.ino(),
        big_meta.ino(),
        "a hardlink shares its inode"
    );
    assert_eq!(fs::metadata(f.path("etc")).unwrap().nlink(), 2);
    assert_eq!(root.nlink(), 4, "root: ., .., etc/.. and tmp/..");

    assert_eq!(fs::read_link(f.path("etc/link")).unwrap(), Path::new("big"));
    assert_eq!(fs::read(f.path("etc/link")).unwrap(), big);
    assert_eq!(fs::read(f.path("etc/big-link")).unwrap(), big);
    assert_eq!(fs::read(f.path("empty")).unwrap(), b"");
    assert_eq!(fs::read(f.path("sudo")).unwrap(), b"#!/bin/true\n");
    assert_eq!(
        fs::metadata(f.path("sudo")).unwrap().permissions().mode() & 0o7777,
        0o4755
    );
    assert_eq!(fs::metadata(f.path("tmp")).unwrap().mode() & 0o7777, 0o1777);
    let null = fs::symlink_metadata(f.path("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(fs::symlink_metadata(f.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());

    // A read across a chunk boundary, and one past the end.
    let file = fs::File::open(f.path("etc/big")).unwrap();
    let mut buf = vec![0; 10_000];
    file.read_exact_at(&mut buf, 65_536 - 5_000).unwrap();
    assert_eq!(buf, big[65_536 - 5_000..65_536 + 5_000]);
    assert_eq!(file.read_at(&mut buf, big.len() as u64 + 10).unwrap(), 0);

    let mut value = [0u8; 64];
    let n = rustix::fs::getxattr(f.path("etc/big"), "user.note", &mut value).unwrap();
    assert_eq!(&value[..n], b"hello");
    let mut list = [0u8; 256];
    let n = rustix::fs::listxattr(f.path("etc/big"), &mut list).unwrap();
    assert_eq!(&list[..n], b"user.note\0security.capability\0");
    assert_eq!(
        rustix::fs::getxattr(f.path("etc/big"), "user.nope", &mut value),
        Err(rustix::io::Errno::NODATA)
    );

    let erofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
    assert!(erofs(fs::write(f.path("sudo"), b"x")));
    assert!(erofs(fs::write(f.path("new"), b"x")));
    assert!(erofs(fs::create_dir(f.path("etc/d"))));
    assert!(erofs(fs::remove_file(f.path("sudo"))));

    let stats = f.mnt.handle().stats();
    assert_eq!(stats.failed_reads, 0);
    assert_eq!(stats.files_total, 3);
    assert_eq!(stats.files_present, 3);
    assert_eq!(stats.chunks_fetched, 5 + 3);
    assert_eq!(stats.bytes_fetched, big.len() as u64 + 12);
    assert_eq!(
        stats.compressed_bytes_fetched,
        4 * 32_768 + (big.len() as u64 - 4 * 65_536) / 2 + 3 * 2
    );
    assert_eq!(statvfs_files(&f.path("")), 9);
}

fn statvfs_files(p: &Path) -> u64 {
    rustix::fs::statvfs(p).unwrap().f_files
}

#[test]
fn a_corrupted_chunk_is_eio_logged_and_never_cached_needs_root_and_fuse() {
    require!(prereq::fuse());
    logs();
    let source = Arc::new(FakeSource::default());
    let good = pattern(8192, 1);
    let f = mount_tree(
        |b| b.add(file(&source, "corrupt-me", &good, 4096)).unwrap(),
        source.clone(),
        None,
        MountOptions::default(),
    );
    // The second chunk's bytes change on the way.
    let second = Digest::of(&good[4096..]);
    source
        .chunks
        .lock()
        .unwrap()
        .insert(second.clone(), pattern(4096, 2));
    let mut head = vec![0; 4096];
    let file = fs::File::open(f.path("corrupt-me")).unwrap();
    file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, good[..4096]);
    let err = fs::read(f.path("corrupt-me")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let cache = f.tmp.path().join("cache");
    assert!(!cache.join("sha256").join(second.hex()).exists());
    assert_eq!(cached_chunks(&cache), 1);
    let lines = log_lines_with("corrupt-me");
    assert!(!lines.is_empty(), "no warn line");
    assert!(
        lines[0].contains("WARN") && lines[0].contains(&second.short()),
        "{lines:?}"
    );
    assert!(lines[0].contains("do not match"), "{lines:?}");
    assert!(f.mnt.handle().stats().failed_reads >= 1);
}

#[test]
fn a_failing_source_is_eio_quickly_needs_root_and_fuse() {
    require!(prereq::fuse());
    logs();
    let source = Arc::new(FakeSource {
        fail: Some("registry unreachable: connection refused"),
        ..FakeSource::default()
    });
    let f = mount_tree(
        |b| b.add(file(&source, "unreachable", b"bytes", 4)).unwrap(),
        source.clone(),
        None,
        MountOptions::default(),
    );
    let started = Instant::now();
    let err = fs::read(f.path("unreachable")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let lines = log_lines_with("unreachable");
    assert!(
        lines.iter().any(|l| l.contains("connection refused")),
        "{lines:?}"
    );
    // Metadata still answers while the source is down.
    assert_eq!(fs::metadata(f.path("unreachable")).unwrap().len(), 5);
}

#[test]
fn concurrent_readers_fetch_each_chunk_once_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource {
        delay: Duration::from_millis(30),
        ..FakeSource::default()
    });
    let content = pattern(1 << 20, 3);
    let f = mount_tree(
        |b| b.add(file(&source, "shared", &content, 128 << 10)).unwrap(),
        source.clone(),
        None,
        MountOptions::default(),
    );
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                // O_DIRECT-free readers share the page cache, so make each
                // one miss it: separate opens, reads in different orders.
                let file = fs::File::open(f.path("shared")).unwrap();
                let mut buf = vec![0; 128 << 10];
                for i in (0..8).rev() {
                    file.read_exact_at(&mut buf, i * (128 << 10)).unwrap();
                }
            });
        }
    });
    assert_eq!(fs::read(f.path("shared")).unwrap(), content);
    let calls = source.calls.lock().unwrap();
    assert_eq!(calls.len(), 8);
    assert!(calls.values().all(|&n| n == 1), "{calls:?}");
}

#[test]
fn fetches_are_bounded_and_never_block_metadata_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource {
        delay: Duration::from_millis(300),
        ..FakeSource::default()
    });
    let names: Vec<String> = (0..6).map(|i| format!("slow{i}")).collect();
    let f = mount_tree(
        |b| {
            for (i, n) in names.iter().enumerate() {
                b.add(file(&source, n, &pattern(1000, i as u64 + 100), 1000))
                    .unwrap();
            }
        },
        source.clone(),
        None,
        MountOptions {
            max_fetches: 2,
            // Each read its own fetch, so six wait on the source at once.
            readahead_bytes: 0,
            ..MountOptions::default()
        },
    );
    std::thread::scope(|s| {
        for n in &names {
            let p = f.path(n);
            s.spawn(move || fs::read(p).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
        // While six reads wait on the source, the session loop still
        // answers lookups and directory listings at once.
        let started = Instant::now();
        assert_eq!(fs::read_dir(f.path("")).unwrap().count(), 6);
        assert_eq!(fs::metadata(f.path("slow5")).unwrap().len(), 1000);
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    });
    assert_eq!(source.total_calls(), 6);
    assert_eq!(source.max_in_flight.load(Ordering::SeqCst), 2);
}

#[test]
fn a_second_mount_with_the_same_cache_fetches_nothing_needs_root_and_fuse() {
    require!(prereq::fuse());
    let cache = tempfile::tempdir().unwrap();
    let content = pattern(200_000, 9);
    let first = Arc::new(FakeSource::default());
    let build = |s: &FakeSource| {
        let e = file(s, "f", &content, 50_000);
        move |b: &mut TreeBuilder| b.add(e).unwrap()
    };
    let a = mount_tree(
        build(&first),
        first.clone(),
        Some(cache.path()),
        MountOptions::default(),
    );
    assert_eq!(fs::read(a.path("f")).unwrap(), content);
    assert_eq!(first.total_calls(), 4);
    let second = Arc::new(FakeSource::default());
    let b = mount_tree(
        build(&second),
        second.clone(),
        Some(cache.path()),
        MountOptions::default(),
    );
    assert_eq!(fs::read(b.path("f")).unwrap(), content);
    assert_eq!(second.total_calls(), 0);
    let stats = b.mnt.handle().stats();
    assert_eq!(stats.chunks_fetched, 0);
    // A chunk that two kernel reads share counts once for each.
    assert!(stats.cache_hits >= 4, "{stats:?}");
    assert_eq!(stats.files_present, 1);
}

#[test]
fn two_mounts_reading_one_file_at_once_fetch_each_chunk_once_per_node_needs_root_and_fuse() {
    require!(prereq::fuse());
    let cache = tempfile::tempdir().unwrap();
    let content = pattern(400_000, 11);
    let sources: Vec<Arc<FakeSource>> = (0..2)
        .map(|_| {
            Arc::new(FakeSource {
                delay: Duration::from_millis(50),
                ..FakeSource::default()
            })
        })
        .collect();
    // Two pods: two mounts of the same layer, each with its own source,
    // sharing the node's chunk cache.
    let mounts: Vec<Fixture> = sources
        .iter()
        .map(|s| {
            let e = file(s, "f", &content, 100_000);
            mount_tree(
                |b| b.add(e).unwrap(),
                s.clone(),
                Some(cache.path()),
                MountOptions::default(),
            )
        })
        .collect();
    std::thread::scope(|s| {
        for m in &mounts {
            s.spawn(|| assert_eq!(fs::read(m.path("f")).unwrap(), content));
        }
    });
    let mut per_chunk: HashMap<Digest, usize> = HashMap::new();
    for src in &sources {
        for (d, n) in src.calls.lock().unwrap().iter() {
            *per_chunk.entry(d.clone()).or_default() += n;
        }
    }
    assert_eq!(per_chunk.len(), 4);
    assert!(per_chunk.values().all(|&n| n == 1), "{per_chunk:?}");
}

#[test]
fn other_users_get_in_and_the_kernel_checks_modes_needs_root_and_fuse() {
    require!(prereq::fuse());
    let cat = require!(["/usr/bin/cat", "/bin/cat"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "cat is not installed (apt-get install coreutils)".to_string()));
    let source = Arc::new(FakeSource::default());
    let f = mount_tree(
        |b| {
            let mut e = file(&source, "private", b"secret", 4);
            e.meta.mode = 0o600;
            b.add(e).unwrap();
            b.add(file(&source, "public", b"hello", 4)).unwrap();
        },
        source.clone(),
        None,
        MountOptions::default(),
    );
    use std::os::unix::process::CommandExt as _;
    let cat_as = |uid: u32, name: &str| {
        std::process::Command::new(&cat)
            .arg(f.path(name))
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    // The mount sits in a 0700 temp dir: let other users walk to it.
    fs::set_permissions(f.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let owner = cat_as(1000, "private");
    assert!(owner.status.success(), "{owner:?}");
    assert_eq!(owner.stdout, b"secret");
    let other = cat_as(2000, "private");
    assert!(
        !other.status.success(),
        "uid 2000 read a 0600 file of uid 1000"
    );
    assert!(String::from_utf8_lossy(&other.stderr).contains("Permission denied"));
    assert_eq!(cat_as(2000, "public").stdout, b"hello");
}

#[test]
fn owners_are_shifted_by_the_mount_offset_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let f = mount_tree(
        |b| b.add(file(&source, "owned", b"x", 4)).unwrap(),
        source.clone(),
        None,
        MountOptions {
            uid_offset: 100_000,
            gid_offset: 200_000,
            ..MountOptions::default()
        },
    );
    let m = fs::metadata(f.path("owned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (101_000, 201_001));
    let root = fs::metadata(f.path("")).unwrap();
    assert_eq!((root.uid(), root.gid()), (100_000, 200_000));
}

#[test]
fn a_backing_dir_serves_reads_without_following_symlinks_needs_root_and_fuse() {
    require!(prereq::fuse());
    let source = Arc::new(FakeSource::default());
    let f = mount_tree(
        |b| {
            b.add(dir("d")).unwrap();
            b.add(file(&source, "d/local", b"from chunks", 4)).unwrap();
            b.add(file(&source, "d/escape", b"chunk bytes", 4)).unwrap();
        },
        source.clone(),
        None,
        MountOptions::default(),
    );
    let backing = f.tmp.path().join("backing");
    fs::create_dir_all(backing.join("d")).unwrap();
    fs::write(backing.join("d/local"), b"from a copy").unwrap();
    let outside = f.tmp.path().join("outside");
    fs::write(&outside, b"OUTSIDE!!!!").unwrap();
    std::os::unix::fs::symlink(&outside, backing.join("d/escape")).unwrap();
    f.mnt.handle().set_backing_dir(&backing).unwrap();
    assert_eq!(fs::read(f.path("d/local")).unwrap(), b"from a copy");
    assert_eq!(fs::read(f.path("d/escape")).unwrap(), b"chunk bytes");
    assert_eq!(source.total_calls(), 3, "only d/escape came from chunks");
}

/// Runs `mount(2)`; the overlay test's mounts go through here.
fn sys_mount(fstype: &str, target: &Path, data: &str) {
    let data = std::ffi::CString::new(data).unwrap();
    rustix::mount::mount(
        fstype,
        target,
        fstype,
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .unwrap_or_else(|e| panic!("mount {fstype} on {}: {e}", target.display()));
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn a_kernel_overlay_honours_whiteouts_and_opaque_dirs_needs_root_fuse_and_overlay() {
    require!(prereq::fuse());
    require!(prereq::overlay());
    let source = Arc::new(FakeSource::default());
    let f = mount_tree(
        |b| {
            b.add(Entry {
                path: "gone".into(),
                kind: Kind::CharDev { major: 0, minor: 0 },
                meta: meta(0),
            })
            .unwrap();
            let mut o = dir("opaque");
            o.meta.xattrs = vec![(OsString::from("trusted.overlay.opaque"), b"y".to_vec())];
            b.add(o).unwrap();
            b.add(file(&source, "opaque/new", b"new", 4)).unwrap();
            b.add(dir("kept")).unwrap();
            b.add(file(&source, "kept/upper-layer", b"lazy", 4))
                .unwrap();
        },
        source.clone(),
        None,
        MountOptions::default(),
    );
    let base = f.tmp.path();
    let lower = base.join("lower");
    for d in ["opaque", "kept"] {
        fs::create_dir_all(lower.join(d)).unwrap();
    }
    fs::write(lower.join("gone"), b"old").unwrap();
    fs::write(lower.join("opaque/old"), b"old").unwrap();
    fs::write(lower.join("kept/lower-layer"), b"old").unwrap();
    let rw = base.join("rw");
    let merged = base.join("merged");
    fs::create_dir_all(&rw).unwrap();
    fs::create_dir_all(&merged).unwrap();
    sys_mount("tmpfs", &rw, "mode=0755");
    let _rw = Unmount(rw.clone());
    fs::create_dir_all(rw.join("upper")).unwrap();
    fs::create_dir_all(rw.join("work")).unwrap();
    sys_mount(
        "overlay",
        &merged,
        &format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            f.mnt.mountpoint().display(),
            lower.display(),
            rw.join("upper").display(),
            rw.join("work").display()
        ),
    );
    let _merged = Unmount(merged.clone());
    assert!(
        !merged.join("gone").exists(),
        "the whiteout hides the lower file"
    );
    let names = |d: &str| {
        let mut v: Vec<_> = fs::read_dir(merged.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(""), ["kept", "opaque"]);
    assert_eq!(
        names("opaque"),
        ["new"],
        "the opaque dir hides the lower one's entries"
    );
    assert_eq!(names("kept"), ["lower-layer", "upper-layer"]);
    assert_eq!(fs::read(merged.join("opaque/new")).unwrap(), b"new");
    // Writes go to the upper dir; the lazy layer stays as it was.
    fs::write(merged.join("kept/upper-layer"), b"changed").unwrap();
    assert_eq!(fs::read(f.path("kept/upper-layer")).unwrap(), b"lazy");
}

#[test]
fn a_mount_whose_server_died_is_detached_needs_root_and_fuse() {
    require!(prereq::fuse());
    let tmp = tempfile::tempdir().unwrap();
    let mp = tmp.path().join("stale");
    fs::create_dir(&mp).unwrap();
    assert!(!detach_stale(&mp).unwrap(), "a plain dir is left alone");
    {
        // A FUSE mount whose server goes away at once: the device closes
        // without answering, as when cvmd is killed.
        let dev = fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap();
        use std::os::fd::AsRawFd as _;
        sys_mount(
            "fuse",
            &mp,
            &format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd()),
        );
    }
    let err = fs::metadata(&mp).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert!(detach_stale(&mp).unwrap());
    assert!(fs::metadata(&mp).unwrap().is_dir());
    assert!(!detach_stale(&mp).unwrap());
    let _ = std::io::stderr().flush();
}
