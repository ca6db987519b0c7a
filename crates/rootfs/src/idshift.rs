//! ID shifting for the chowned-copy fallback (pure): owners, the IDs inside
//! POSIX ACL xattrs and the root ID of namespaced file capabilities.

use super::IdMap;

/// ID the kernel shows for an unmapped ID inside a user namespace
/// (`/proc/sys/kernel/overflowuid`, default 65534).
const OVERFLOW_ID: u32 = 65534;

/// Shifts a container ID into the host range `[base, base + size)`. IDs the
/// range cannot hold become the overflow ID inside it, the owner a user
/// namespace would show for them anyway.
pub fn shift(id: u32, base: u32, size: u32) -> u32 {
    let inside = if id < size {
        id
    } else {
        OVERFLOW_ID.min(size - 1)
    };
    base + inside
}

pub fn shift_uid(map: &IdMap, uid: u32) -> u32 {
    shift(uid, map.host_uid, map.size)
}

pub fn shift_gid(map: &IdMap, gid: u32) -> u32 {
    shift(gid, map.host_gid, map.size)
}

const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

const CAPS: &[u8] = b"security.capability";
/// `VFS_CAP_REVISION_3` in the top byte of `magic_etc` (linux/capability.h).
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_V3_SIZE: usize = 24;

/// Why an xattr value could not be rewritten.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Rewrites an xattr value for the shifted copy. `None`: keep it unchanged.
pub fn shift_xattr(map: &IdMap, name: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
    if name == ACL_ACCESS || name == ACL_DEFAULT {
        return shift_acl(map, value).map(Some);
    }
    if name == CAPS {
        return Ok(shift_caps_rootid(map, value));
    }
    Ok(None)
}

/// The on-disk ACL xattr (`posix_acl_xattr_header` + entries of tag u16,
/// perm u16, id u32, little-endian; include/uapi/linux/posix_acl_xattr.h).
/// Only ACL_USER and ACL_GROUP entries carry a real ID.
pub fn shift_acl(map: &IdMap, value: &[u8]) -> Result<Vec<u8>, Malformed> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(Malformed("ACL xattr length is not 4 + 8n"));
    }
    let version = u32::from_le_bytes(value[0..4].try_into().expect("4 bytes"));
    if version != ACL_VERSION {
        return Err(Malformed("ACL xattr version is not 2"));
    }
    let mut out = value.to_vec();
    for entry in out[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes(entry[4..8].try_into().expect("4 bytes"));
        let shifted = match tag {
            ACL_USER => shift_uid(map, id),
            ACL_GROUP => shift_gid(map, id),
            _ => continue,
        };
        entry[4..8].copy_from_slice(&shifted.to_le_bytes());
    }
    Ok(out)
}

/// A v3 file capability names the root uid it is valid for; v2 ones have
/// none and stay as they are.
fn shift_caps_rootid(map: &IdMap, value: &[u8]) -> Option<Vec<u8>> {
    if value.len() != VFS_CAP_V3_SIZE {
        return None;
    }
    let magic = u32::from_le_bytes(value[0..4].try_into().expect("4 bytes"));
    if magic & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_3 {
        return None;
    }
    let rootid = u32::from_le_bytes(value[20..24].try_into().expect("4 bytes"));
    let mut out = value.to_vec();
    out[20..24].copy_from_slice(&shift_uid(map, rootid).to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: IdMap = IdMap {
        host_uid: 100000,
        host_gid: 200000,
        size: 65536,
    };

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn ids_shift_into_the_range() {
        assert_eq!(shift_uid(&MAP, 0), 100000);
        assert_eq!(shift_gid(&MAP, 4), 200004);
        assert_eq!(shift_uid(&MAP, 65535), 165535);
        assert_eq!(shift_uid(&MAP, 70000), 165534);
        assert_eq!(shift(5, 10, 3), 12);
    }

    #[test]
    fn acl_user_and_group_entries_shift_others_keep_undefined_id() {
        const UNDEF: u32 = u32::MAX;
        let v = acl(&[
            (0x01, 7, UNDEF),
            (ACL_USER, 6, 1000),
            (0x04, 5, UNDEF),
            (ACL_GROUP, 5, 4),
            (0x10, 7, UNDEF),
            (0x20, 0, UNDEF),
        ]);
        let out = shift_xattr(&MAP, ACL_DEFAULT, &v).unwrap().unwrap();
        assert_eq!(
            out,
            acl(&[
                (0x01, 7, UNDEF),
                (ACL_USER, 6, 101000),
                (0x04, 5, UNDEF),
                (ACL_GROUP, 5, 200004),
                (0x10, 7, UNDEF),
                (0x20, 0, UNDEF)
            ])
        );
    }

    #[test]
    fn malformed_acl_is_refused() {
        assert!(shift_acl(&MAP, &[2, 0, 0]).is_err());
        assert!(shift_acl(&MAP, &acl(&[(2, 0, 0)])[..11]).is_err());
        let mut v1 = acl(&[]);
        v1[0] = 1;
        assert!(shift_acl(&MAP, &v1).is_err());
    }

    #[test]
    fn v3_caps_rootid_shifts_v2_and_other_xattrs_stay() {
        let mut v3 = (VFS_CAP_REVISION_3 | 1).to_le_bytes().to_vec();
        v3.extend([0u8; 16]);
        v3.extend(0u32.to_le_bytes());
        let out = shift_xattr(&MAP, CAPS, &v3).unwrap().unwrap();
        assert_eq!(&out[20..24], &100000u32.to_le_bytes());
        let v2 = [0u8; 20];
        assert_eq!(shift_xattr(&MAP, CAPS, &v2).unwrap(), None);
        assert_eq!(shift_xattr(&MAP, b"user.x", b"v").unwrap(), None);
    }
}
