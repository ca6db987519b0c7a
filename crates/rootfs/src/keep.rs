//! What a workspace's disk keeps across starts that change what it sits on:
//!
//! - a rebase (reset of the disk on an image change) keeps the persistent
//!   paths: they are moved aside (`<ws>/carry/`) before the old disk is
//!   discarded, and into the fresh one before it is mounted;
//! - a different ID range (a disk kept on a volume, booted again on another
//!   node or after its range was reclaimed): the disk's owners are shifted
//!   from the range they were written in to the new one, which
//!   `upper.idmap` (or `flat.idmap`) records.
//!
//! The disk may come from a volume and is untrusted: no path is walked
//! through a symlink, no other file system is entered, and an owner outside
//! the recorded range becomes the range's nobody rather than keeping a
//! host ID that is not the workspace's.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::{idshift, IdMap, RootfsError};

pub const CARRY: &str = "carry";
pub const UPPER_NOTE: &str = "upper.idmap";

/// The user namespace's overflow ID (`/proc/sys/kernel/overflowuid`).
const NOBODY: u32 = 65534;

fn keep_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Keep {
        path: path.to_owned(),
        source,
    }
}

/// A persistent path as a relative path of plain components; `None` for
/// `/`, `..` and the like.
pub fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The name a carried path is stashed under: one component, unique per path.
fn stash_name(rel: &Path) -> String {
    rel.as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether every ancestor of `rel` under `root` is a real directory (no
/// symlink) on `root`'s file system; false when one is missing.
fn ancestors_are_dirs(root: &Path, rel: &Path) -> io::Result<bool> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() && m.dev() == dev => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Moves each of `paths` found in the disk root `root` to `<ws>/carry/`.
/// A stash left by an interrupted earlier rebase wins: it holds the older,
/// real content. Returns the paths stashed now or before.
pub fn stash(ws: &Path, root: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, RootfsError> {
    let carry = ws.join(CARRY);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&carry)
        .map_err(keep_err(&carry))?;
    let mut kept = Vec::new();
    for rel in paths.iter().filter_map(|p| relative(p)) {
        let to = carry.join(stash_name(&rel));
        if to.symlink_metadata().is_ok() {
            kept.push(rel);
            continue;
        }
        if !root.exists() || !ancestors_are_dirs(root, &rel).map_err(keep_err(root))? {
            continue;
        }
        let from = root.join(&rel);
        match std::fs::rename(&from, &to) {
            Ok(()) => kept.push(rel),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(keep_err(&from)(e)),
        }
    }
    Ok(kept)
}

/// Moves what [`stash`] put aside into the fresh disk root `root`, making
/// missing parents as the image's layers (top first) have them, shifted
/// by `shift`. A path whose parent is not a directory in the image stays
/// in the stash, with a warning. Removes the stash when it is empty.
pub fn put_back(
    ws: &Path,
    root: &Path,
    paths: &[PathBuf],
    layers_top_first: &[PathBuf],
    shift: Option<&IdMap>,
) -> Result<(), RootfsError> {
    let carry = ws.join(CARRY);
    for rel in paths.iter().filter_map(|p| relative(p)) {
        let from = carry.join(stash_name(&rel));
        if from.symlink_metadata().is_err() {
            continue;
        }
        if let Err(why) = make_parents(root, &rel, layers_top_first, shift) {
            tracing::warn!(path = %rel.display(), stash = %from.display(), why, "a kept path cannot go into the new disk; it stays in the stash");
            continue;
        }
        let to = root.join(&rel);
        if to.symlink_metadata().is_ok() {
            // The flat copy has the new image's version: the kept one wins.
            let res = if to.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&to)
            } else {
                std::fs::remove_file(&to)
            };
            res.map_err(keep_err(&to))?;
        }
        std::fs::rename(&from, &to).map_err(keep_err(&to))?;
    }
    let _ = std::fs::remove_dir(&carry);
    Ok(())
}

/// Creates the missing ancestors of `rel` under `root` with the mode and
/// owner the image gives them (overlay's copy-up would do the same).
fn make_parents(
    root: &Path,
    rel: &Path,
    layers_top_first: &[PathBuf],
    shift: Option<&IdMap>,
) -> Result<(), String> {
    let parts: Vec<_> = rel.components().collect();
    let mut sub = PathBuf::new();
    for c in &parts[..parts.len().saturating_sub(1)] {
        sub.push(c);
        let at = root.join(&sub);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Err(format!("{} is not a directory", sub.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
        let image = layers_top_first
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(&sub)).ok());
        let (mode, uid, gid) = match image {
            Some(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
            Some(_) => {
                return Err(format!(
                    "/{} is not a directory in the image",
                    sub.display()
                ))
            }
            None => (0o755, 0, 0),
        };
        let (uid, gid) = match shift {
            Some(map) => (idshift::shift_uid(map, uid), idshift::shift_gid(map, gid)),
            None => (uid, gid),
        };
        let made = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&at)
            .and_then(|()| std::os::unix::fs::lchown(&at, Some(uid), Some(gid)))
            .and_then(|()| std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode)));
        made.map_err(|e| format!("{}: {e}", at.display()))?;
    }
    Ok(())
}

/// The range a note (see `ws_dir::flat_note`) names: `Some(None)` for
/// unshifted owners, `None` when the note is missing or unreadable.
pub fn parse_note(note: &str) -> Option<Option<IdMap>> {
    let words: Vec<&str> = note.split_whitespace().collect();
    match words.as_slice() {
        ["unshifted"] => Some(None),
        ["shifted", "uid", u, "gid", g, "size", s] => Some(Some(IdMap {
            host_uid: u.parse().ok()?,
            host_gid: g.parse().ok()?,
            size: s.parse().ok()?,
        })),
        _ => None,
    }
}

/// The owner an ID written under range `from` gets under range `to`
/// (`None`: unshifted, container IDs as they are). An ID already in `to`
/// and not in `from` stays (an interrupted earlier shift got to it); any
/// other ID outside `from` is not the workspace's and becomes nobody.
pub fn remap(id: u32, from: Option<(u32, u32)>, to: Option<(u32, u32)>) -> u32 {
    let within = |(base, size): (u32, u32)| (base..base.saturating_add(size)).contains(&id);
    if to.is_some_and(within) && !from.is_some_and(within) {
        return id;
    }
    let inside = match from {
        None => id,
        Some((base, _)) if within(from.expect("some")) => id - base,
        Some(_) => NOBODY,
    };
    match to {
        None => inside,
        Some((base, size)) => idshift::shift(inside, base, size),
    }
}

/// Shifts every owner under `root` from range `from` to `to`; links are
/// not followed and other file systems not entered. Returns how many
/// entries changed owner.
pub fn reshift(root: &Path, from: Option<&IdMap>, to: Option<&IdMap>) -> Result<u64, RootfsError> {
    let uids = |m: Option<&IdMap>| m.map(|m| (m.host_uid, m.size));
    let gids = |m: Option<&IdMap>| m.map(|m| (m.host_gid, m.size));
    let dev = std::fs::symlink_metadata(root)
        .map_err(keep_err(root))?
        .dev();
    let mut changed = 0;
    // A hard link's inode is shifted once: a second visit would take the
    // new owner for a foreign one.
    let mut linked = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(keep_err(&path))?;
        if meta.dev() != dev {
            continue;
        }
        if !meta.is_dir() && meta.nlink() > 1 && !linked.insert(meta.ino()) {
            continue;
        }
        let uid = remap(meta.uid(), uids(from), uids(to));
        let gid = remap(meta.gid(), gids(from), gids(to));
        if (uid, gid) != (meta.uid(), meta.gid()) {
            // chown drops a file's capabilities (security.capability): kept
            // and put back, a v3 one's root ID following the range.
            let caps = meta.is_file().then(|| file_caps(&path)).flatten();
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(keep_err(&path))?;
            if let Some(mut caps) = caps {
                if caps.len() == CAPS_V3_LEN {
                    let root = u32::from_le_bytes(caps[20..24].try_into().expect("4 bytes"));
                    caps[20..24].copy_from_slice(&remap(root, uids(from), uids(to)).to_le_bytes());
                }
                rustix::fs::lsetxattr(&path, CAPS, &caps, rustix::fs::XattrFlags::empty())
                    .map_err(|e| keep_err(&path)(e.into()))?;
            }
            // chown clears set-user/group-ID bits; the disk keeps its modes.
            if !meta.is_symlink() && meta.mode() & 0o6000 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode()))
                    .map_err(keep_err(&path))?;
            }
            changed += 1;
        }
        if !meta.is_symlink() {
            for name in ACLS {
                let Some(acl) = xattr(&path, name) else {
                    continue;
                };
                if let Some(new) = remap_acl(&acl, from, to) {
                    rustix::fs::lsetxattr(&path, name, &new, rustix::fs::XattrFlags::empty())
                        .map_err(|e| keep_err(&path)(e.into()))?;
                }
            }
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(keep_err(&path))? {
                stack.push(entry.map_err(keep_err(&path))?.path());
            }
        }
    }
    Ok(changed)
}

const CAPS: &str = "security.capability";
/// `vfs_ns_cap_data`: magic, 2 × (permitted, inheritable), rootid.
const CAPS_V3_LEN: usize = 24;

const ACLS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

fn file_caps(path: &Path) -> Option<Vec<u8>> {
    xattr(path, CAPS)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    // Capabilities are 24 bytes and ACLs rarely over a few entries; the
    // kernel's bound (XATTR_SIZE_MAX) only when it says ERANGE.
    for size in [4096, 65536] {
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Some(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// A POSIX ACL xattr (header, then entries of tag u16, perm u16, id u32,
/// little-endian) with its named users and groups moved from range `from`
/// to `to`; `None` when nothing changes or it is malformed (kept as is).
fn remap_acl(value: &[u8], from: Option<&IdMap>, to: Option<&IdMap>) -> Option<Vec<u8>> {
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP: u16 = 0x08;
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut out = value.to_vec();
    for entry in out[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes(entry[4..8].try_into().expect("4 bytes"));
        let new = match tag {
            ACL_USER => remap(
                id,
                from.map(|m| (m.host_uid, m.size)),
                to.map(|m| (m.host_uid, m.size)),
            ),
            ACL_GROUP => remap(
                id,
                from.map(|m| (m.host_gid, m.size)),
                to.map(|m| (m.host_gid, m.size)),
            ),
            _ => continue,
        };
        entry[4..8].copy_from_slice(&new.to_le_bytes());
    }
    (out != value).then_some(out)
}

/// Brings the owners of a kept disk root into range `to`, going by the
/// note `note_name` beside it (missing or unreadable: the root's own
/// owner is taken as the range's root, with a log line), and rewrites the
/// note.
pub fn follow_range(
    ws: &Path,
    root: &Path,
    note_name: &str,
    to: Option<&IdMap>,
) -> Result<(), RootfsError> {
    let note_path = ws.join(note_name);
    let want = super::ws_dir::flat_note(to);
    let found = read_note_nofollow(&note_path);
    if found.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    let from = match found.as_deref().and_then(parse_note) {
        Some(from) => from,
        None => {
            let m = std::fs::symlink_metadata(root).map_err(keep_err(root))?;
            let guess = (m.uid() != 0 || m.gid() != 0).then(|| IdMap {
                host_uid: m.uid(),
                host_gid: m.gid(),
                size: to.map_or(65536, |t| t.size),
            });
            tracing::warn!(note = %note_path.display(), root_owner = m.uid(), "the disk's ID range record is missing or unreadable: taking its root's owner as the range's root");
            guess
        }
    };
    if from.as_ref() != to {
        let changed = reshift(root, from.as_ref(), to)?;
        tracing::info!(changed, from = ?from, to = ?to, disk = %root.display(), "the kept disk's owners follow the workspace's ID range");
    }
    std::fs::write(&note_path, want).map_err(keep_err(&note_path))
}

/// A small note file, never through a symlink.
fn read_note_nofollow(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut s = String::new();
    file.take(4096).read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_paths_are_plain_relative_paths() {
        assert_eq!(
            relative(Path::new("/var/lib/docker")),
            Some("var/lib/docker".into())
        );
        assert_eq!(relative(Path::new("/")), None);
        assert_eq!(relative(Path::new("/home/../etc")), None);
    }

    #[test]
    fn owners_follow_the_range_and_foreign_ones_become_nobody() {
        let (a, b) = (Some((100000, 65536)), Some((300000, 65536)));
        assert_eq!(remap(101000, a, b), 301000);
        assert_eq!(remap(100000, a, None), 0);
        assert_eq!(remap(1000, None, b), 301000);
        // Already moved by an interrupted earlier shift.
        assert_eq!(remap(301000, a, b), 301000);
        // Neither range's: another workspace's or the node's own.
        assert_eq!(remap(0, a, b), 300000 + NOBODY);
        assert_eq!(remap(500000, a, None), NOBODY);
    }

    #[test]
    fn a_reshift_keeps_file_capabilities_needs_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to chown and set capabilities");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (v2, v3) = (dir.path().join("v2"), dir.path().join("v3"));
        let mut caps2 = 0x0200_0001u32.to_le_bytes().to_vec();
        caps2.extend([0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut caps3 = 0x0300_0001u32.to_le_bytes().to_vec();
        caps3.extend(&caps2[4..]);
        caps3.extend(100_000u32.to_le_bytes());
        for (p, caps) in [(&v2, &caps2), (&v3, &caps3)] {
            std::fs::write(p, "x").unwrap();
            std::os::unix::fs::lchown(p, Some(100_000), Some(100_000)).unwrap();
            rustix::fs::lsetxattr(p, CAPS, caps, rustix::fs::XattrFlags::empty()).unwrap();
        }
        let map = |b| IdMap {
            host_uid: b,
            host_gid: b,
            size: 65536,
        };
        std::os::unix::fs::lchown(dir.path(), Some(100_000), Some(100_000)).unwrap();
        reshift(dir.path(), Some(&map(100_000)), Some(&map(300_000))).unwrap();
        assert_eq!(std::fs::metadata(&v2).unwrap().uid(), 300_000);
        assert_eq!(file_caps(&v2).unwrap(), caps2);
        let after = file_caps(&v3).unwrap();
        assert_eq!(&after[20..24], &300_000u32.to_le_bytes());
    }

    #[test]
    fn acl_named_entries_follow_the_range() {
        let m = |b| IdMap {
            host_uid: b,
            host_gid: b,
            size: 65536,
        };
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, id) in [(0x01u16, u32::MAX), (0x02, 101_000), (0x08, 100_004)] {
            acl.extend(tag.to_le_bytes());
            acl.extend(6u16.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        let out = remap_acl(&acl, Some(&m(100_000)), Some(&m(300_000))).unwrap();
        assert_eq!(&out[4..12], &acl[4..12], "the owner entry has no ID");
        assert_eq!(&out[16..20], &301_000u32.to_le_bytes());
        assert_eq!(&out[24..28], &300_004u32.to_le_bytes());
        assert_eq!(remap_acl(&acl, Some(&m(100_000)), Some(&m(100_000))), None);
        assert_eq!(remap_acl(&acl[..7], None, Some(&m(1))), None);
    }

    #[test]
    fn notes_parse_and_garbage_is_unknown() {
        assert_eq!(parse_note("unshifted\n"), Some(None));
        let m = IdMap {
            host_uid: 1,
            host_gid: 2,
            size: 3,
        };
        assert_eq!(
            parse_note(&super::super::ws_dir::flat_note(Some(&m))),
            Some(Some(m))
        );
        assert_eq!(parse_note("shifted uid x gid 2 size 3"), None);
        assert_eq!(parse_note(""), None);
    }

    #[test]
    fn a_rebase_keeps_the_paths_and_nothing_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (ws, old, new, layer) = (
            dir.path(),
            dir.path().join("old"),
            dir.path().join("new"),
            dir.path().join("layer"),
        );
        std::fs::create_dir_all(old.join("home/u")).unwrap();
        std::fs::write(old.join("home/u/f"), "mine").unwrap();
        std::fs::create_dir_all(old.join("var/lib/docker")).unwrap();
        std::fs::write(old.join("var/lib/docker/d"), "img").unwrap();
        std::fs::write(old.join("etc"), "not kept").unwrap();
        // A hostile disk: /opt a link to outside.
        std::fs::create_dir_all(dir.path().join("outside/x")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), old.join("opt")).unwrap();
        std::fs::create_dir_all(layer.join("var/lib")).unwrap();
        std::fs::set_permissions(layer.join("var"), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        let paths: Vec<PathBuf> = ["/home", "/var/lib/docker", "/opt/x", "/root"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let kept = stash(ws, &old, &paths).unwrap();
        assert_eq!(
            kept,
            vec![PathBuf::from("home"), PathBuf::from("var/lib/docker")]
        );
        assert!(
            dir.path().join("outside/x").is_dir(),
            "nothing moved out through the link"
        );
        std::fs::create_dir(&new).unwrap();
        put_back(ws, &new, &paths, &[layer], None).unwrap();
        assert_eq!(
            std::fs::read_to_string(new.join("home/u/f")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(new.join("var/lib/docker/d")).unwrap(),
            "img"
        );
        let var = std::fs::metadata(new.join("var")).unwrap();
        assert_eq!(var.mode() & 0o7777, 0o711, "the parent as the image has it");
        assert!(!new.join("etc").exists() && !ws.join(CARRY).exists());
    }
}
