//! Ownership, mode, xattrs and times of an entry: parsed from the header and
//! its PAX records (pure), then applied without following the final symlink.
//!
//! Order per entry is chown, chmod, xattrs, times: chown(2) clears setuid and
//! setgid and the kernel drops `security.capability` on an owner change
//! (commoncap `cap_inode_killpriv`), so both must come after it; setting
//! xattrs does not touch mtime, so times can be last. Directory mode and
//! times are deferred by the caller until all children were written.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// overlayfs reads its own state from these on lowerdirs (opaque, redirect,
/// metacopy, origin; Documentation/filesystems/overlayfs.rst). Only this
/// module's whiteout handling may write them; a layer that carries them in
/// its tar is trying to steer the overlay (e.g. redirect a directory to
/// another lower path), so they are dropped.
const OVERLAY_XATTR: &[u8] = b"trusted.overlay.";

/// Metadata of one entry, as far as the layer can set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub mtime: (i64, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// How many xattrs policy refused (`trusted.overlay.*`), and the first
    /// one's name: counted, not kept, so a layer of many cannot grow memory.
    pub dropped: u64,
    pub dropped_example: Option<Vec<u8>>,
}

/// Builds the metadata from header fields (with PAX `uid`/`gid` already
/// applied, see [`pax_id`]) and the entry's PAX records (`mtime`,
/// `SCHILY.xattr.*`).
pub(super) fn parse<'a>(
    uid: u64,
    gid: u64,
    mode: u32,
    header_mtime: u64,
    pax: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Meta, String> {
    let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} does not fit in 32 bits"))?;
    let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} does not fit in 32 bits"))?;
    let mut mtime = (i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    let mut dropped = 0;
    let mut dropped_example = None;
    for (key, value) in pax {
        if key == b"mtime" {
            mtime = parse_pax_time(value).ok_or_else(|| {
                format!(
                    "PAX mtime {:?} is not a number",
                    String::from_utf8_lossy(value)
                )
            })?;
        } else if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
            if name.starts_with(OVERLAY_XATTR) {
                dropped += 1;
                dropped_example.get_or_insert_with(|| name.to_vec());
            } else {
                xattrs.push((name.to_vec(), value.to_vec()));
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode: mode & 0o7777,
        mtime,
        xattrs,
        dropped,
        dropped_example,
    })
}

/// The last PAX `uid` or `gid` record (`key`), if any, as a decimal number.
pub(super) fn pax_id(pax: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> Result<Option<u64>, String> {
    let Some((_, value)) = pax.iter().rev().find(|(k, _)| k == key) else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(value);
    let bad = || {
        format!(
            "PAX {} {text:?} is not a decimal number",
            String::from_utf8_lossy(key)
        )
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    text.parse().map(Some).map_err(|_| bad())
}

/// Parses a PAX time (`[-]SECONDS[.FRACTION]`, POSIX pax "Extended Header
/// Keyword Descriptions") into seconds and nanoseconds, flooring negatives.
pub(super) fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (neg, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (digit, scale) in frac.bytes().zip((0..9u32).rev()) {
        nanos += u32::from(digit - b'0') * 10u32.pow(scale);
    }
    if !neg {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        return Some((-secs, 0));
    }
    Some((-secs - 1, 1_000_000_000 - nanos))
}

impl Meta {
    pub(super) fn timestamps(&self) -> Timestamps {
        let ts = Timespec {
            tv_sec: self.mtime.0,
            tv_nsec: self.mtime.1.into(),
        };
        // Layers carry no meaningful atime; docker and containerd set it to
        // the mtime too.
        Timestamps {
            last_access: ts,
            last_modification: ts,
        }
    }

    fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)))
    }

    fn raw_mode(&self) -> Mode {
        Mode::from_raw_mode(self.mode)
    }
}

/// Outcome of setting one xattr that the host refused on policy grounds.
pub(super) struct SkippedXattr {
    pub name: Vec<u8>,
    pub error: io::Error,
}

/// Result of a metadata step: which syscall failed, for the error variant.
pub(super) enum MetaError {
    Owner(io::Error),
    Mode(io::Error),
    Xattr(Vec<u8>, io::Error),
    Times(io::Error),
}

/// Applies owner, mode, xattrs and times to a regular file through its fd;
/// `chown` and `chmod` are false when the file got them at creation.
pub(super) fn apply_file(
    file: &File,
    meta: &Meta,
    chown: bool,
    chmod: bool,
    skipped: &mut Vec<SkippedXattr>,
) -> Result<(), MetaError> {
    if chown {
        let (u, g) = meta.owner();
        rustix::fs::fchown(file, u, g).map_err(|e| MetaError::Owner(e.into()))?;
    }
    if chmod {
        rustix::fs::fchmod(file, meta.raw_mode()).map_err(|e| MetaError::Mode(e.into()))?;
    }
    for (name, value) in &meta.xattrs {
        let res = rustix::fs::fsetxattr(file, OsStr::from_bytes(name), value, XattrFlags::empty());
        xattr_result(name, res, skipped)?;
    }
    rustix::fs::futimens(file, &meta.timestamps()).map_err(|e| MetaError::Times(e.into()))
}

/// What sort of object `name` is, which decides the steps that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Object {
    Symlink,
    /// Mode and times are applied later, after its children.
    Dir,
    /// Device or fifo.
    Node,
}

/// Applies metadata to `name` in `dir` without following it: a symlink gets
/// no chmod (Linux ignores symlink modes) and no `user.*` xattrs (the kernel
/// refuses them on symlinks, xattr(7)); a directory gets owner and xattrs now.
pub(super) fn apply_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    object: Object,
    meta: &Meta,
    chown: bool,
    skipped: &mut Vec<SkippedXattr>,
) -> Result<(), MetaError> {
    if chown {
        let (u, g) = meta.owner();
        rustix::fs::chownat(dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| MetaError::Owner(e.into()))?;
    }
    if object == Object::Node {
        // Nodes cannot be opened for fchmod without side effects (a fifo
        // blocks, a device driver runs). The name was created by mknodat a
        // moment ago in this single-threaded pass, so it is no symlink.
        rustix::fs::chmodat(dir, name, meta.raw_mode(), AtFlags::empty())
            .map_err(|e| MetaError::Mode(e.into()))?;
    }
    if !meta.xattrs.is_empty() {
        let path = proc_path(dir, name);
        for (xname, value) in &meta.xattrs {
            if object == Object::Symlink && xname.starts_with(b"user.") {
                continue;
            }
            let res =
                rustix::fs::lsetxattr(&path, OsStr::from_bytes(xname), value, XattrFlags::empty());
            xattr_result(xname, res, skipped)?;
        }
    }
    if object != Object::Dir {
        set_times_at(dir, name, meta).map_err(MetaError::Times)?;
    }
    Ok(())
}

/// Deferred directory step on an fd opened without following: mode (unless
/// it has it already, `mode`), then times.
pub(super) fn finish_dir(dir: &File, mode: u32, meta: &Meta) -> Result<(), MetaError> {
    if mode != meta.mode {
        rustix::fs::fchmod(dir, meta.raw_mode()).map_err(|e| MetaError::Mode(e.into()))?;
    }
    rustix::fs::futimens(dir, &meta.timestamps()).map_err(|e| MetaError::Times(e.into()))
}

fn set_times_at(dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta) -> io::Result<()> {
    rustix::fs::utimensat(dir, name, &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(Into::into)
}

/// Sets `trusted.overlay.opaque=y` on an open directory.
pub(super) fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    let path = proc_path(dir, OsStr::new("."));
    rustix::fs::lsetxattr(&path, "trusted.overlay.opaque", b"y", XattrFlags::empty())
        .map_err(Into::into)
}

/// There is no `lsetxattrat`, and symlinks and devices cannot be opened
/// for fsetxattr without following or triggering them. `/proc/self/fd/N` is
/// a magic link to the already-resolved directory, so only `name` is looked
/// up, and lsetxattr does not follow it.
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut bytes = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    bytes.extend_from_slice(name.as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// EPERM (no CAP_SYS_ADMIN for `trusted.*`, unprivileged `security.*`) and
/// EOPNOTSUPP (filesystem without that namespace) are host limits, not layer
/// faults: skip with a warning rather than fail the image.
fn xattr_result(
    name: &[u8],
    res: rustix::io::Result<()>,
    skipped: &mut Vec<SkippedXattr>,
) -> Result<(), MetaError> {
    match res {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::PERM || e == rustix::io::Errno::OPNOTSUPP => {
            skipped.push(SkippedXattr {
                name: name.to_vec(),
                error: e.into(),
            });
            Ok(())
        }
        Err(e) => Err(MetaError::Xattr(name.to_vec(), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_parses_fractions_and_negatives() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    #[test]
    fn parse_collects_xattrs_and_masks_type_bits() {
        let pax: Vec<(&[u8], &[u8])> = vec![
            (b"SCHILY.xattr.security.capability", b"\x01\x00"),
            (b"SCHILY.xattr.user.k", b"v"),
            (b"SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            (b"mtime", b"10.25"),
            (b"comment", b"ignored"),
        ];
        let meta = parse(1, 2, 0o104755, 5, pax).unwrap();
        assert_eq!(meta.mode, 0o4755);
        assert_eq!(meta.mtime, (10, 250_000_000));
        assert_eq!(meta.xattrs.len(), 2);
        assert_eq!(meta.xattrs[0].0, b"security.capability");
        assert_eq!(meta.dropped, 1);
        assert_eq!(
            meta.dropped_example.as_deref(),
            Some(&b"trusted.overlay.redirect"[..])
        );
    }

    #[test]
    fn pax_ids_take_the_last_record_and_must_be_numbers() {
        let pax = |recs: &[(&[u8], &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
            recs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
        };
        assert_eq!(pax_id(&pax(&[]), b"uid"), Ok(None));
        let two = pax(&[(b"uid", b"1"), (b"gid", b"7"), (b"uid", b"3000000")]);
        assert_eq!(pax_id(&two, b"uid"), Ok(Some(3_000_000)));
        assert_eq!(pax_id(&two, b"gid"), Ok(Some(7)));
        let bad = pax(&[(b"uid", b"-1")]);
        assert_eq!(
            pax_id(&bad, b"uid"),
            Err("PAX uid \"-1\" is not a decimal number".to_string())
        );
        assert!(pax_id(&pax(&[(b"gid", b"")]), b"gid").is_err());
    }

    #[test]
    fn parse_refuses_ids_beyond_32_bits() {
        assert!(parse(1 << 40, 0, 0o644, 0, []).is_err());
    }
}
