//! Applying one tar entry: decide (pure helpers in `kind`, `path`,
//! `whiteout`), resolve its parent beneath the root, create, set metadata.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use rustix::fs::FileType;
use rustix::io::Errno;

use super::bounds::{self, Short, Space};
use super::deferred::Deferred;
use super::fsops::{self, Defaults, Existing, ResolveError, Root, Slot, WriteError};
use super::kind::{kind_of, Kind};
use super::member::Member;
use super::meta::{self, Meta, MetaError, Object, SkippedXattr};
use super::path::{CleanPath, PathError};
use super::sparse::Holey;
use super::whiteout::{classify, Whiteout};
use super::{UnpackError, UnpackOptions, UnpackStats};

const COPY_BUF: usize = 64 << 10;

pub(super) struct Unpacker<'o> {
    root: Root,
    opts: &'o UnpackOptions,
    stats: UnpackStats,
    dirs: Deferred,
    /// Xattrs dropped by policy or refused by the host: counted, with the
    /// first as an example, and logged once when the layer ends.
    dropped_xattrs: u64,
    dropped_example: Option<String>,
    skipped_xattrs: u64,
    skipped_example: Option<String>,
    /// All entry data read so far (files and any payload of other entries),
    /// metered against `max_unpacked_bytes`.
    data_bytes: u64,
    /// What this layer added to the image's meter: given back unless the
    /// layer finishes.
    image_charged: u64,
    /// The layer's destination, for statvfs.
    fs: std::fs::File,
    /// Bytes that fit above the reserve at the last statvfs, less what was
    /// admitted since; and what was admitted since.
    headroom: u64,
    since_stat: u64,
    finished: bool,
    buf: Vec<u8>,
    /// The last parent resolved, by its components: tar lists a directory's
    /// files together, and a name resolves to the same directory until
    /// something is removed (creating never changes where an existing
    /// path leads), so the cache is dropped on every removal.
    parent_cache: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
    /// Owner and umask that new objects get unasked: chown and chmod calls
    /// that would set just these are skipped.
    defaults: Defaults,
    /// A `system.posix_acl_default` xattr in the layer: modes of files
    /// created beneath it follow the ACL, not the umask.
    acl_defaults: bool,
}

impl Drop for Unpacker<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(meter) = &self.opts.image_meter {
                meter.release(self.image_charged);
            }
        }
    }
}

impl<'o> Unpacker<'o> {
    pub(super) fn new(root: Root, fs: std::fs::File, opts: &'o UnpackOptions) -> Self {
        let defaults = fsops::creation_defaults(&fs);
        Self {
            root,
            opts,
            stats: UnpackStats::default(),
            dirs: Deferred::new(opts.limits.deferred_dir_bytes),
            dropped_xattrs: 0,
            dropped_example: None,
            skipped_xattrs: 0,
            skipped_example: None,
            data_bytes: 0,
            image_charged: 0,
            fs,
            headroom: 0,
            since_stat: 0,
            finished: false,
            buf: vec![0; COPY_BUF],
            parent_cache: None,
            defaults,
            acl_defaults: false,
        }
    }

    fn budget(&self) -> u64 {
        match self.opts.max_unpacked_bytes {
            0 => u64::MAX,
            max => max.saturating_sub(self.data_bytes),
        }
    }

    fn too_large(&self, name: &str) -> UnpackError {
        fail!(self.opts.image, name, TooLarge, layer: self.opts.layer.clone(),
            limit: self.opts.max_unpacked_bytes)
    }

    /// Counts `n` bytes of entry data against the layer's and the image's
    /// bounds, refusing before they are written.
    fn charge(&mut self, n: u64, name: &str) -> Result<(), UnpackError> {
        if n > self.budget() {
            return Err(self.too_large(name));
        }
        if let Some(meter) = &self.opts.image_meter {
            if !meter.charge(n) {
                return Err(fail!(self.opts.image, name, ImageTooLarge,
                    layer: self.opts.layer.clone(), limit: meter.limit()));
            }
            self.image_charged += n;
        }
        self.data_bytes += n;
        Ok(())
    }

    /// Admits `need` bytes to the cache's file system above the reserve,
    /// asking statvfs again when they exceed the headroom last seen or
    /// [`bounds::RECHECK_EVERY`] bytes were admitted since.
    fn admit(&mut self, need: u64, name: &str) -> Result<(), UnpackError> {
        let Some(reserve) = self.opts.cache_reserve else {
            return Ok(());
        };
        if need > self.headroom || self.since_stat >= bounds::RECHECK_EVERY {
            let space = Space::of(&self.fs)
                .map_err(|e| fail!(self.opts.image, name, CreateFile, source: e))?;
            bounds::fits(space, reserve, need).map_err(|s| self.short(s, name))?;
            self.headroom = space.avail - reserve.bytes(space.total);
            self.since_stat = 0;
        }
        self.headroom -= need;
        self.since_stat += need;
        Ok(())
    }

    fn short(&self, s: Short, name: &str) -> UnpackError {
        let reserve = self
            .opts
            .cache_reserve
            .map(|r| r.to_string())
            .unwrap_or_default();
        fail!(self.opts.image, name, CacheReserve, layer: self.opts.layer.clone(),
            need: s.need, avail: s.avail, keep: s.keep, reserve: reserve)
    }

    /// Applies `member`, whose `size` bytes of data `data` yields.
    pub(super) fn entry(
        &mut self,
        header: &tar::Header,
        member: &Member,
        data: &mut dyn Holey,
        size: u64,
        name: &str,
    ) -> Result<(), UnpackError> {
        let opts = self.opts;
        let img = opts.image.as_str();
        self.stats.entries += 1;
        let raw = &member.path;
        let kind = kind_of(header.entry_type().as_byte(), raw);
        if kind == Kind::Ignore {
            return Ok(());
        }
        let path = CleanPath::parse(raw).map_err(|e| match e {
            PathError::Escapes => fail!(img, name, Escapes),
            PathError::Invalid => fail!(img, name, InvalidName),
        })?;
        if opts.skip_estargz_metadata
            && kind == Kind::File
            && path.split_last().is_some_and(|(parents, leaf)| {
                parents.is_empty() && leaf.to_str().is_some_and(crate::estargz::is_metadata_name)
            })
        {
            return Ok(());
        }
        // OCI: a whiteout is recognised by name whatever its type flag.
        match classify(&path).map_err(|_| fail!(img, name, BadWhiteout))? {
            Whiteout::Opaque => return self.opaque(&path, name),
            Whiteout::Remove(target) => return self.whiteout(&path, target, name),
            Whiteout::None => {}
        }
        if let Kind::Unsupported(flag) = kind {
            return Err(fail!(img, name, UnsupportedType, kind: char::from(flag)));
        }
        let meta =
            read_meta(header, &member.pax).map_err(|e| fail!(img, name, Header, source: e))?;
        if let Some(example) = &meta.dropped_example {
            self.dropped_xattrs += meta.dropped;
            self.stats.skipped_xattrs += meta.dropped;
            self.dropped_example.get_or_insert_with(|| {
                format!(
                    "{} on {}",
                    super::limits::shown(example, 64),
                    limits_shown(name)
                )
            });
        }

        let (parent, leaf) = match path.split_last() {
            Some((parents, leaf)) => (self.parent(parents, name)?, leaf),
            None if kind == Kind::Dir => (self.parent(&[], name)?, OsStr::new(".")),
            None => return Err(fail!(img, name, RootNotDirectory)),
        };
        let dir = parent.as_fd();
        if meta
            .xattrs
            .iter()
            .any(|(x, _)| x == b"system.posix_acl_default")
        {
            self.acl_defaults = true;
        }

        if kind == Kind::Hardlink {
            return self.hardlink(member, &path, &parent, leaf, name);
        }
        // Objects are created first and the name cleared only when taken
        // (EEXIST): in a well-formed layer names are new, and a stat per
        // entry to find that out would be wasted.
        let mut skipped = Vec::new();
        let applied = match kind {
            Kind::File => {
                // The declared size, holes included, is what the bounds
                // count: a sparse bomb is refused here, not by the disk.
                // The reserve counts what takes blocks: holes do not.
                self.charge(size, name)?;
                self.admit(data.data_left().unwrap_or(size).min(size), name)?;
                let reserve = self.opts.cache_reserve;
                let mut short = None;
                let mut check = |file: &std::fs::File, left: u64| {
                    let (Some(reserve), Ok(space)) = (reserve, Space::of(file)) else {
                        return true;
                    };
                    short = bounds::fits(space, reserve, left).err();
                    short.is_none()
                };
                let mut written =
                    fsops::write_file(dir, leaf, meta.mode, data, size, &mut self.buf, &mut check);
                if matches!(&written, Err(WriteError::Create(e)) if e.raw_os_error() == Some(libc::EEXIST))
                {
                    self.replace(dir, leaf, false, name)?;
                    written = fsops::write_file(
                        dir,
                        leaf,
                        meta.mode,
                        data,
                        size,
                        &mut self.buf,
                        &mut check,
                    );
                }
                if let Some(s) = short {
                    return Err(self.short(s, name));
                }
                let (file, n) = written.map_err(|e| match e {
                    WriteError::Create(e) => fail!(img, name, CreateFile, source: e),
                    WriteError::Write(e) => fail!(img, name, WriteFile, source: e),
                    WriteError::Read(e) => UnpackError::Read {
                        after: name.to_string(),
                        image: img.to_string(),
                        source: e,
                    },
                    WriteError::TooLarge | WriteError::Stopped => self.too_large(name),
                })?;
                self.stats.file_bytes += n;
                self.stats.files += 1;
                let (chown, chmod) = (self.chown(&meta, true), self.chmod(meta.mode));
                meta::apply_file(&file, &meta, chown, chmod, &mut skipped)
            }
            Kind::Dir => {
                let slot = match fsops::mkdir(dir, leaf) {
                    Ok(()) => Slot::Empty,
                    Err(Errno::EXIST) => {
                        let slot = self.replace(dir, leaf, true, name)?;
                        if slot != Slot::KeptDir {
                            fsops::mkdir(dir, leaf)
                                .map_err(|e| fail!(img, name, CreateDir, source: e.into()))?;
                        }
                        slot
                    }
                    Err(e) => return Err(fail!(img, name, CreateDir, source: e.into())),
                };
                if slot == Slot::ReplacedWhiteout {
                    // The same layer whited out and recreated this dir: lower
                    // content must stay hidden (OCI "Whiteouts").
                    self.set_opaque_child(&parent, leaf, name)?;
                }
                let id = fsops::dir_identity(dir, leaf)
                    .map_err(|e| fail!(img, name, CreateDir, source: e))?;
                self.dirs
                    .add(&path, id, &meta)
                    .map_err(|broke| UnpackError::Limit {
                        at: format!("entry {:?}", limits_shown(name)),
                        image: img.to_string(),
                        layer: self.opts.layer.clone(),
                        broke: broke.to_string(),
                    })?;
                self.stats.dirs += 1;
                // A kept directory has whatever owner an earlier entry gave it.
                let chown = self.chown(&meta, slot != Slot::KeptDir);
                meta::apply_at(dir, leaf, Object::Dir, &meta, chown, &mut skipped)
            }
            Kind::Symlink => {
                let target = member
                    .link
                    .as_deref()
                    .ok_or_else(|| fail!(img, name, MissingLinkName))?;
                self.make(dir, leaf, name, |d, l| fsops::symlink(target, d, l))?
                    .map_err(|e| fail!(img, name, CreateSymlink, source: e.into()))?;
                self.stats.symlinks += 1;
                let chown = self.chown(&meta, true);
                meta::apply_at(dir, leaf, Object::Symlink, &meta, chown, &mut skipped)
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                let file_type = match kind {
                    Kind::CharDevice => FileType::CharacterDevice,
                    Kind::BlockDevice => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                match self.make(dir, leaf, name, |d, l| {
                    fsops::mknod(d, l, file_type, major, minor)
                })? {
                    Ok(()) => {}
                    // Without CAP_MKNOD (rootless, user namespaces) device
                    // nodes cannot exist; runtimes bind-mount the needed ones.
                    Err(Errno::PERM) => {
                        tracing::warn!(entry = name, "mknod not permitted, device skipped");
                        self.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(fail!(img, name, CreateNode, source: e.into())),
                }
                self.stats.nodes += 1;
                let chown = self.chown(&meta, true);
                meta::apply_at(dir, leaf, Object::Node, &meta, chown, &mut skipped)
            }
            Kind::Hardlink | Kind::Ignore | Kind::Unsupported(_) => unreachable!("handled above"),
        };
        self.meta_result(applied, skipped, name)
    }

    fn parent(&mut self, comps: &[Vec<u8>], name: &str) -> Result<Rc<OwnedFd>, UnpackError> {
        if let Some((cached, fd)) = &self.parent_cache {
            if cached.as_slice() == comps {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = self
            .root
            .open_dir_create(comps)
            .map_err(|e| resolve_error(&self.opts.image, name, e))?;
        let fd = Rc::new(fd);
        self.parent_cache = Some((comps.to_vec(), Rc::clone(&fd)));
        Ok(fd)
    }

    /// Makes `leaf` free for a new entry (see [`fsops::clear_slot`]).
    fn replace(
        &mut self,
        dir: BorrowedFd<'_>,
        leaf: &OsStr,
        want_dir: bool,
        name: &str,
    ) -> Result<Slot, UnpackError> {
        // What goes may be a directory that the cached parent is, or lies
        // beneath (a symlink entry replacing a directory, say).
        self.parent_cache = None;
        fsops::clear_slot(dir, leaf, want_dir)
            .map_err(|e| fail!(self.opts.image, name, Replace, source: e))
    }

    /// Runs `create`, and once more after clearing the name if it was taken:
    /// later entries win, as in docker. The inner result is the creation's.
    fn make(
        &mut self,
        dir: BorrowedFd<'_>,
        leaf: &OsStr,
        name: &str,
        create: impl Fn(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<()>,
    ) -> Result<rustix::io::Result<()>, UnpackError> {
        match create(dir, leaf) {
            Err(Errno::EXIST) => {
                self.replace(dir, leaf, false, name)?;
                Ok(create(dir, leaf))
            }
            other => Ok(other),
        }
    }

    /// Whether the owner must be set: not when the layer wants the ids a
    /// `fresh` object (created just now by this process) has already.
    fn chown(&self, meta: &Meta, fresh: bool) -> bool {
        self.opts.preserve_ownership
            && !(fresh && self.defaults.owner == Some((meta.uid, meta.gid)))
    }

    /// Whether a file created with `mode`'s permission bits needs a chmod:
    /// for setuid, setgid or sticky, for bits the umask took, or when an ACL
    /// may have decided the mode.
    fn chmod(&self, mode: u32) -> bool {
        match self.defaults.umask {
            Some(umask) if !self.acl_defaults => mode & 0o7000 != 0 || mode & umask != 0,
            _ => true,
        }
    }

    /// Hardlink targets are member names of this same layer (tar semantics):
    /// cleaned like entry names, so `/etc/passwd` means the layer's own
    /// `etc/passwd`, which must already exist. The target's parent is
    /// resolved beneath the root; its final component is linked, never
    /// followed. Metadata comes from the target inode, as with GNU tar.
    fn hardlink(
        &mut self,
        member: &Member,
        path: &CleanPath,
        parent: &OwnedFd,
        leaf: &OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        let opts = self.opts;
        let img = opts.image.as_str();
        let raw = member
            .link
            .as_deref()
            .ok_or_else(|| fail!(img, name, MissingLinkName))?;
        let target_name = String::from_utf8_lossy(raw).into_owned();
        let escapes = || fail!(img, name, HardlinkEscapes, target: target_name.clone());
        let missing = || fail!(img, name, HardlinkTargetMissing, target: target_name.clone());
        let target = match CleanPath::parse(raw) {
            Ok(t) => t,
            Err(PathError::Escapes) => return Err(escapes()),
            Err(PathError::Invalid) => return Err(fail!(img, name, InvalidName)),
        };
        if &target == path {
            // Some archivers record a file linked to itself; nothing to do.
            return Ok(());
        }
        let (target_parents, target_leaf) = target.split_last().ok_or_else(missing)?;
        let from = match self.root.open_dir(target_parents) {
            Ok(fd) => fd,
            Err(ResolveError::Outside | ResolveError::Loop) => return Err(escapes()),
            Err(ResolveError::Missing | ResolveError::NotDir) => return Err(missing()),
            Err(ResolveError::Io(e)) => return Err(fail!(img, name, Resolve, source: e)),
        };
        let link = |d: BorrowedFd<'_>, l: &OsStr| fsops::hardlink(from.as_fd(), target_leaf, d, l);
        match self.make(parent.as_fd(), leaf, name, link)? {
            Ok(()) => {}
            // EPERM: the target is a directory.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::PERM) => return Err(missing()),
            Err(e) => return Err(fail!(img, name, CreateHardlink, source: e.into())),
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    /// `DIR/.wh.NAME`: NAME in lower layers is deleted. Same-layer content
    /// is not affected by a whiteout (OCI "Whiteouts"): an existing dir
    /// becomes opaque, which hides exactly the lower content, and an
    /// existing non-dir already hides the lower NAME.
    fn whiteout(
        &mut self,
        path: &CleanPath,
        target: &OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        let opts = self.opts;
        let img = opts.image.as_str();
        let parent = self.parent(path.parent().components(), name)?;
        let dir = parent.as_fd();
        match fsops::existing(dir, target)
            .map_err(|e| fail!(img, name, CreateWhiteout, source: e))?
        {
            Existing::Nothing => {
                fsops::mknod(dir, target, FileType::CharacterDevice, 0, 0)
                    .map_err(|e| fail!(img, name, CreateWhiteout, source: e.into()))?;
                self.stats.whiteouts += 1;
            }
            Existing::Dir => self.set_opaque_child(&parent, target, name)?,
            Existing::Other => {}
        }
        Ok(())
    }

    /// `DIR/.wh..wh..opq`: DIR (created if this layer lacks it) hides all
    /// lower content.
    fn opaque(&mut self, path: &CleanPath, name: &str) -> Result<(), UnpackError> {
        let dir = self.parent(path.parent().components(), name)?;
        meta::set_opaque(dir.as_fd())
            .map_err(|e| fail!(self.opts.image, name, SetOpaque, source: e))?;
        self.stats.opaque_dirs += 1;
        Ok(())
    }

    fn set_opaque_child(
        &mut self,
        parent: &OwnedFd,
        leaf: &OsStr,
        name: &str,
    ) -> Result<(), UnpackError> {
        let opts = self.opts;
        let img = opts.image.as_str();
        let child = fsops::open_child_dir(parent.as_fd(), leaf)
            .map_err(|e| fail!(img, name, SetOpaque, source: e))?;
        meta::set_opaque(child.as_fd()).map_err(|e| fail!(img, name, SetOpaque, source: e))?;
        self.stats.opaque_dirs += 1;
        Ok(())
    }

    fn meta_result(
        &mut self,
        applied: Result<(), MetaError>,
        skipped: Vec<SkippedXattr>,
        name: &str,
    ) -> Result<(), UnpackError> {
        for s in skipped {
            self.skipped_xattrs += 1;
            self.stats.skipped_xattrs += 1;
            self.skipped_example.get_or_insert_with(|| {
                let xattr = super::limits::shown(&s.name, 64);
                format!("{xattr} on {}: {}", limits_shown(name), s.error)
            });
        }
        applied.map_err(|e| meta_error(&self.opts.image, name, e))
    }

    /// Reads whatever data the entry still has (a payload on a non-file
    /// entry), metered like file contents, so the next header is in place.
    pub(super) fn drain_entry(
        &mut self,
        data: &mut dyn Holey,
        name: &str,
    ) -> Result<(), UnpackError> {
        loop {
            let hole = data.take_hole();
            let budget = self.budget();
            let read = io::copy(
                &mut (&mut *data).take(budget.saturating_add(1)),
                &mut io::sink(),
            )
            .map_err(|source| UnpackError::Read {
                after: name.to_string(),
                image: self.opts.image.clone(),
                source,
            })?;
            if hole == 0 && read == 0 {
                return Ok(());
            }
            self.charge(hole.saturating_add(read), name)?;
        }
    }

    /// Applies the deferred directory modes and times in archive order (any
    /// order works: setting a dir's times does not touch its parent's).
    pub(super) fn finish(mut self) -> Result<UnpackStats, UnpackError> {
        self.finished = true;
        let opts = self.opts;
        let img = opts.image.as_str();
        if let Some(example) = &self.dropped_example {
            tracing::warn!(count = self.dropped_xattrs, example = %example,
                "overlay xattrs (trusted.overlay.*) in the layer tar dropped");
        }
        if let Some(example) = &self.skipped_example {
            tracing::warn!(count = self.skipped_xattrs, example = %example,
                "xattrs the cache file system refused were not set");
        }
        let mut dirs = std::mem::replace(&mut self.dirs, Deferred::new(0));
        for d in dirs.take() {
            let entry = String::from_utf8_lossy(&d.path.to_relative()).into_owned();
            let (parent, leaf) = match d.path.split_last() {
                Some((parents, leaf)) => (self.root.open_dir(parents), leaf),
                None => (self.root.open_dir(&[]), OsStr::new(".")),
            };
            // Gone or replaced by a later entry: its metadata died with it.
            let Ok(parent) = parent else { continue };
            let Ok(dir) = fsops::open_dir_nofollow(parent.as_fd(), leaf) else {
                continue;
            };
            let Ok((id, mode)) = fsops::identity(&dir) else {
                continue;
            };
            if id != d.id {
                continue;
            }
            meta::finish_dir(&dir, mode, &d.meta).map_err(|e| meta_error(img, &entry, e))?;
        }
        Ok(std::mem::take(&mut self.stats))
    }
}

/// An entry name for a log line: names are bounded by PATH_MAX before they
/// get here, this keeps lines short.
fn limits_shown(name: &str) -> String {
    super::limits::shown(name.as_bytes(), 256)
}

/// Header fields, overridden by PAX `uid`/`gid` (ids over 2097151 need
/// them), plus the PAX records `meta` reads.
fn read_meta(header: &tar::Header, pax: &[(Vec<u8>, Vec<u8>)]) -> io::Result<Meta> {
    let old = header.as_old();
    let id = |key: &[u8], field: &[u8], parsed: io::Result<u64>| match meta::pax_id(pax, key) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => blank_is_zero(field, parsed),
        Err(e) => Err(io::Error::other(e)),
    };
    let uid = id(b"uid", &old.uid, header.uid())?;
    let gid = id(b"gid", &old.gid, header.gid())?;
    let mode = blank_is_zero(&old.mode, header.mode())?;
    let mtime = blank_is_zero(&old.mtime, header.mtime())?;
    let fields = pax.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
    meta::parse(uid, gid, mode, mtime, fields).map_err(io::Error::other)
}

/// Go's archive/tar (docker, containerd) reads an all-NUL or all-space
/// numeric field as 0; some producers leave uid/gid/mtime empty.
fn blank_is_zero<T: Default>(field: &[u8], parsed: io::Result<T>) -> io::Result<T> {
    match parsed {
        Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        other => other,
    }
}

fn resolve_error(image: &str, name: &str, e: ResolveError) -> UnpackError {
    match e {
        ResolveError::Outside => fail!(image, name, ParentOutside),
        ResolveError::Loop => fail!(image, name, ParentLoop),
        ResolveError::NotDir | ResolveError::Missing => fail!(image, name, ParentNotDirectory),
        ResolveError::Io(source) => fail!(image, name, Resolve, source: source),
    }
}

fn meta_error(image: &str, name: &str, e: MetaError) -> UnpackError {
    match e {
        MetaError::Owner(source) => fail!(image, name, SetOwner, source: source),
        MetaError::Mode(source) => fail!(image, name, SetMode, source: source),
        MetaError::Xattr(xattr, source) => fail!(image, name, SetXattr,
            name: String::from_utf8_lossy(&xattr).into_owned(), source: source),
        MetaError::Times(source) => fail!(image, name, SetTimes, source: source),
    }
}
