//! Mounting a tree, unmounting it, switching it to a local copy, and
//! clearing a mount left by a killed server.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};
use rustix::fs::{Mode, OFlags};
use rustix::mount::UnmountFlags;

use crate::cache::ChunkCache;
use crate::fs::LazyFs;
use crate::read::{Backing, Inner, ReadPool};
use crate::source::ChunkSource;
use crate::stats::StatsSnapshot;
use crate::tree::Tree;

/// How long unmounting waits for the session to end. A mount that is
/// still an overlay's lower layer leaves the mount table at once but lives
/// on in the overlay, and its server must keep answering until the overlay
/// goes: then the session thread is left to end by itself.
const JOIN_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "mounting the lazy layer at {path}: {source} (is /dev/fuse present and is cvmd root?)"
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the lazy layer's read workers: {0}")]
    Workers(#[source] io::Error),
    #[error("unmounting the lazy layer at {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a tree is mounted.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Added to every owner the tree records, for a workspace whose user
    /// namespace maps its root to this host id (the kernel may not ID-map
    /// a FUSE mount).
    pub uid_offset: u32,
    pub gid_offset: u32,
    /// Worker threads serving reads, unless `read_pool` is given.
    pub read_threads: usize,
    /// Workers shared with other mounts (see [`ReadPool`]).
    pub read_pool: Option<ReadPool>,
    /// At most this many chunk fetches from the source at once.
    pub max_fetches: usize,
    /// A read that misses a chunk fetches, in the same request, the chunks
    /// that follow it in the blob (other files of its directory, mostly)
    /// up to this many compressed bytes, and caches them for later reads;
    /// 0 fetches each chunk alone.
    pub readahead_bytes: u64,
    /// The mount's source in the mount table and its name in log lines
    /// (e.g. the layer's short digest).
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            uid_offset: 0,
            gid_offset: 0,
            read_threads: 16,
            read_pool: None,
            max_fetches: 8,
            readahead_bytes: 256 << 10,
            fsname: "cvmd-lazy".into(),
        }
    }
}

/// A handle on a mounted tree, cheap to clone and to keep after the
/// [`Mounted`] moved elsewhere.
#[derive(Debug, Clone)]
pub struct LazyHandle {
    inner: Arc<Inner>,
}

impl LazyHandle {
    /// Serves later reads from `dir`, a complete local copy of the layer
    /// (the unpacked, verified, published layer dir): each file is the one
    /// at the same relative path, opened without following any symlink,
    /// and used only if it is a regular file of the expected size; on any
    /// error a read falls back to chunks.
    pub fn set_backing_dir(&self, dir: &Path) -> io::Result<()> {
        let fd: OwnedFd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut backing = self.inner.backing.write().expect("backing lock");
        let generation = backing.as_ref().map_or(1, |b| b.generation + 1);
        *backing = Some(Backing {
            generation,
            dir: Arc::new(fd),
        });
        Ok(())
    }

    /// The mount's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }
}

/// A mounted tree; dropping it unmounts.
#[derive(Debug)]
pub struct Mounted {
    handle: LazyHandle,
    mountpoint: PathBuf,
    unmounter: Option<SessionUnmounter>,
    session: Option<JoinHandle<io::Result<()>>>,
}

/// Mounts `tree` read-only at `mountpoint` (an existing dir), its file
/// bytes coming from `cache` or else `source`. Needs root (or
/// CAP_SYS_ADMIN) and `/dev/fuse`.
///
/// The mount allows every user (the workspace's users are not cvmd's),
/// checks permissions in the kernel from the presented modes and owners
/// (`default_permissions`), and honours setuid and device nodes, as the
/// layer's plain unpacked dir would.
pub fn mount(
    tree: Tree,
    source: Arc<dyn ChunkSource>,
    cache: Arc<ChunkCache>,
    options: &MountOptions,
    mountpoint: &Path,
) -> Result<Mounted, MountError> {
    let inner = Arc::new(Inner::new(
        options.fsname.clone(),
        tree,
        source,
        cache,
        options.max_fetches,
        options.readahead_bytes,
    ));
    let fs = LazyFs {
        inner: inner.clone(),
        pool: match &options.read_pool {
            Some(pool) => pool.clone(),
            None => ReadPool::new(options.read_threads).map_err(MountError::Workers)?,
        },
        uid_offset: options.uid_offset,
        gid_offset: options.gid_offset,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(options.fsname.clone()),
        MountOption::Subtype("cvmd-lazy".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::NoAtime,
    ];
    config.acl = SessionACL::All;
    let mount_err = |source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let mut session = fuser::Session::new(fs, mountpoint, &config).map_err(mount_err)?;
    let unmounter = session.unmount_callable();
    let thread = std::thread::Builder::new()
        .name("lazyfs-session".into())
        .spawn(move || session.run())
        .map_err(mount_err)?;
    Ok(Mounted {
        handle: LazyHandle { inner },
        mountpoint: mountpoint.to_path_buf(),
        unmounter: Some(unmounter),
        session: Some(thread),
    })
}

impl Mounted {
    /// A handle for [`set_backing_dir`](LazyHandle::set_backing_dir) and
    /// [`stats`](LazyHandle::stats).
    pub fn handle(&self) -> LazyHandle {
        self.handle.clone()
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts. A mount still in use (open files, or the lower dir of an
    /// overlay) is detached instead: it leaves the mount table now and its
    /// server keeps answering until the last user is gone.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), MountError> {
        let Some(mut unmounter) = self.unmounter.take() else {
            return Ok(());
        };
        self.handle
            .inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = unmounter.unmount() {
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(MountError::Unmount {
                    path: self.mountpoint.clone(),
                    source: e,
                });
            }
            rustix::mount::unmount(&self.mountpoint, UnmountFlags::DETACH).map_err(|e| {
                MountError::Unmount {
                    path: self.mountpoint.clone(),
                    source: e.into(),
                }
            })?;
        }
        if let Some(session) = self.session.take() {
            let deadline = Instant::now() + JOIN_WAIT;
            while !session.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if session.is_finished() {
                let _ = session.join();
            }
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!("{e}");
        }
    }
}

/// Detaches a FUSE mount at `mountpoint` whose server is gone (a cvmd
/// killed while serving it: every access fails with ENOTCONN). Returns
/// whether there was one; a live mount or a plain dir is left alone.
pub fn detach_stale(mountpoint: &Path) -> io::Result<bool> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            rustix::mount::unmount(mountpoint, UnmountFlags::DETACH)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(_) => Ok(false),
    }
}
