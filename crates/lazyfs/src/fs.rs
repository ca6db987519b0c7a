//! The FUSE operations: metadata straight from the in-memory tree on the
//! session loop, file reads handed to worker threads (fuser's replies are
//! `Send`), every change refused with EROFS.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::read::{Inner, OpenFile, ReadPool};
use crate::tree::{Kind, Node};

/// The tree never changes while mounted, so the kernel may cache what it
/// learns for long.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// What an owner shifted past `u32::MAX` shows as (the kernel's overflow id).
const OVERFLOW_ID: u32 = 65534;

const BLOCK: u32 = 4096;

#[derive(Debug)]
pub(crate) struct LazyFs {
    pub inner: Arc<Inner>,
    pub pool: ReadPool,
    pub uid_offset: u32,
    pub gid_offset: u32,
}

/// Linux's `new_encode_dev`, the encoding FUSE's `rdev` carries.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File { .. } => FileType::RegularFile,
        Kind::Symlink { .. } => FileType::Symlink,
        Kind::CharDev { .. } => FileType::CharDevice,
        Kind::BlockDev { .. } => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl LazyFs {
    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.inner.tree.node(ino.0).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let (size, rdev) = match &n.kind {
            Kind::Dir => (u64::from(BLOCK), 0),
            Kind::File { size, .. } => (*size, 0),
            Kind::Symlink { target } => (target.as_os_str().len() as u64, 0),
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                (0, encode_dev(*major, *minor))
            }
            Kind::Fifo => (0, 0),
        };
        let m = &n.meta;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: m.mtime,
            mtime: m.mtime,
            ctime: m.mtime,
            crtime: m.mtime,
            kind: file_type(&n.kind),
            perm: u16::try_from(m.mode & 0o7777).expect("masked to 12 bits"),
            nlink: n.nlink,
            uid: m.uid.checked_add(self.uid_offset).unwrap_or(OVERFLOW_ID),
            gid: m.gid.checked_add(self.gid_offset).unwrap_or(OVERFLOW_ID),
            rdev,
            blksize: BLOCK,
            flags: 0,
        }
    }

    /// The `i`th entry of directory `dir` (`ino`) as readdir lists it:
    /// `.`, `..`, then the children by name.
    fn dir_entry<'a>(&self, ino: u64, dir: &'a Node, i: usize) -> Option<(u64, &'a OsStr)> {
        match i {
            0 => Some((ino, OsStr::new("."))),
            1 => Some((dir.parent, OsStr::new(".."))),
            _ => dir
                .children
                .get(i - 2)
                .map(|(name, c)| (*c, name.as_os_str())),
        }
    }

    fn dir(&self, ino: INodeNo) -> Result<&Node, Errno> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            Ok(n)
        } else {
            Err(Errno::ENOTDIR)
        }
    }
}

impl fuser::Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Readdirplus saves a lookup per entry on `ls -l` and on the
        // overlay's merge of a directory; a kernel without it still works.
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_PARALLEL_DIROPS
                // The workspace's user namespace ID-maps each lower dir of its
                // overlay; the kernel (6.12+) allows it on FUSE only when asked.
                | InitFlags::FUSE_ALLOW_IDMAP,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .dir(parent)
            .and_then(|d| d.child(name).ok_or(Errno::ENOENT))
            .and_then(|ino| Ok((ino, self.node(INodeNo(ino))?)));
        match found {
            Ok((ino, n)) => reply.entry(&TTL, &self.attr(ino, n), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &self.attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::Symlink { target }) => reply.data(target.as_os_str().as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino).map(|n| &n.kind) {
            Ok(Kind::Dir) => return reply.error(Errno::EISDIR),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        self.inner
            .handles
            .lock()
            .expect("handles lock")
            .insert(fh, OpenFile::default());
        // The bytes never change: the page cache may keep them across opens.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.inner.clone();
        self.pool
            .spawn(move || match inner.read(ino.0, fh.0, offset, size) {
                Ok(bytes) => reply.data(&bytes),
                Err(()) => reply.error(Errno::EIO),
            });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.inner
            .handles
            .lock()
            .expect("handles lock")
            .remove(&fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.dir(ino) {
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.dir(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut i = usize::try_from(offset).unwrap_or(usize::MAX);
        while let Some((child, name)) = self.dir_entry(ino.0, dir, i) {
            let kind = self
                .inner
                .tree
                .node(child)
                .map_or(FileType::Directory, |n| file_type(&n.kind));
            i += 1;
            // The offset handed back is where the next call resumes.
            if reply.add(INodeNo(child), i as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = match self.dir(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut i = usize::try_from(offset).unwrap_or(usize::MAX);
        while let Some((child, name)) = self.dir_entry(ino.0, dir, i) {
            let Some(n) = self.inner.tree.node(child) else {
                break;
            };
            i += 1;
            if reply.add(
                INodeNo(child),
                i as u64,
                name,
                &TTL,
                &self.attr(child, n),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = &self.inner.tree;
        reply.statfs(
            tree.bytes().div_ceil(u64::from(BLOCK)),
            0,
            0,
            tree.inodes() as u64,
            0,
            BLOCK,
            255,
            BLOCK,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match n.meta.xattrs.iter().find(|(k, _)| k == name) {
            Some((_, value)) => reply_xattr(reply, size, value),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for (k, _) in &n.meta.xattrs {
            names.extend_from_slice(k.as_bytes());
            names.push(0);
        }
        reply_xattr(reply, size, &names);
    }

    // Everything below would change the tree: the mount is read-only (the
    // kernel already refuses most of these on an `ro` mount).

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _: &Request, _: INodeNo, _: &OsStr, _: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: INodeNo,
        _: &OsStr,
        _: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _: &Request, _: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: u32,
        _: u32,
        _: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: &[u8],
        _: i32,
        _: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: u64,
        _: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernels_encoding() {
        assert_eq!(encode_dev(0, 0), 0);
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x123), 0x23 | (8 << 8) | (0x100 << 12));
    }
}
