//! Bounds on what one layer may make cvmd hold in memory or spend time on,
//! checked per member before anything is written (pure).
//!
//! A few MiB of gzip can hold tens of millions of headers or names of a
//! MiB each. The per-name bounds are the kernel's own (PATH_MAX, NAME_MAX,
//! XATTR_NAME_MAX, XATTR_SIZE_MAX in include/uapi/linux/limits.h): a layer
//! past them could not be written as it says anyway. The per-layer counts
//! are far above real layers (the largest seen hold ~1M files).

use std::fmt;

/// The kernel's PATH_MAX counts the terminating NUL.
pub(super) const PATH_MAX: usize = 4096;
pub(super) const NAME_MAX: usize = 255;
pub(super) const XATTR_NAME_MAX: usize = 255;
pub(super) const XATTR_SIZE_MAX: usize = 64 << 10;

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Per-layer bounds; [`Default`] is what cvmd uses, tests lower them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Tar headers (members and extension headers) per layer.
    pub headers: u64,
    /// Extension-header bytes (PAX records, GNU long names and links) of
    /// one member.
    pub ext_bytes_per_member: u64,
    /// Extension-header bytes of the whole layer.
    pub ext_bytes_per_layer: u64,
    /// Memory for directory metadata kept until the layer ends (each
    /// directory's path plus a fixed cost).
    pub deferred_dir_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            headers: 4 << 20,
            ext_bytes_per_member: 1 << 20,
            ext_bytes_per_layer: 256 << 20,
            deferred_dir_bytes: 64 << 20,
        }
    }
}

/// Which bound a member broke, with what it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Broke {
    Headers { limit: u64 },
    ExtMember { had: u64, limit: u64 },
    ExtLayer { limit: u64 },
    Path { had: usize },
    Name { had: usize },
    Link { had: usize },
    XattrName { had: usize },
    XattrValue { had: usize },
    DeferredDirs { limit: u64 },
}

impl fmt::Display for Broke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Broke::Headers { limit } => {
                write!(f, "is past the layer's bound of {limit} tar headers")
            }
            Broke::ExtMember { had, limit } => write!(
                f,
                "has {had} bytes of extension headers (PAX, GNU long names), over the bound \
                 of {limit} per member"
            ),
            Broke::ExtLayer { limit } => write!(
                f,
                "takes the layer's extension headers (PAX, GNU long names) past the bound of \
                 {limit} bytes per layer"
            ),
            Broke::Path { had } => write!(
                f,
                "has a path of {had} bytes, over the bound of {} (PATH_MAX)",
                PATH_MAX - 1
            ),
            Broke::Name { had } => write!(
                f,
                "has a path component of {had} bytes, over the bound of {NAME_MAX} (NAME_MAX)"
            ),
            Broke::Link { had } => write!(
                f,
                "has a link target of {had} bytes, over the bound of {} (PATH_MAX)",
                PATH_MAX - 1
            ),
            Broke::XattrName { had } => write!(
                f,
                "has an xattr name of {had} bytes, over the bound of {XATTR_NAME_MAX} \
                 (XATTR_NAME_MAX)"
            ),
            Broke::XattrValue { had } => write!(
                f,
                "has an xattr value of {had} bytes, over the bound of {XATTR_SIZE_MAX} \
                 (XATTR_SIZE_MAX)"
            ),
            Broke::DeferredDirs { limit } => write!(
                f,
                "takes the directory metadata kept until the layer ends past the bound of \
                 {limit} bytes (too many directories)"
            ),
        }
    }
}

/// Checks a member's names and xattrs against the kernel's bounds.
pub(super) fn check_member(
    path: &[u8],
    link: Option<&[u8]>,
    pax: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), Broke> {
    if path.len() >= PATH_MAX {
        return Err(Broke::Path { had: path.len() });
    }
    if let Some(long) = path.split(|&b| b == b'/').find(|c| c.len() > NAME_MAX) {
        return Err(Broke::Name { had: long.len() });
    }
    if let Some(link) = link.filter(|l| l.len() >= PATH_MAX) {
        return Err(Broke::Link { had: link.len() });
    }
    for (key, value) in pax {
        let Some(name) = key.strip_prefix(XATTR_PREFIX) else {
            continue;
        };
        if name.len() > XATTR_NAME_MAX {
            return Err(Broke::XattrName { had: name.len() });
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(Broke::XattrValue { had: value.len() });
        }
    }
    Ok(())
}

/// A name for a log line or error: at most `max` bytes of it, then how long
/// it really was.
pub(super) fn shown(name: &[u8], max: usize) -> String {
    if name.len() <= max {
        return String::from_utf8_lossy(name).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&name[..max]),
        name.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xattr(name: &[u8], value: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut key = XATTR_PREFIX.to_vec();
        key.extend_from_slice(name);
        vec![(key, vec![0; value])]
    }

    #[test]
    fn names_within_the_kernels_bounds_pass() {
        let name = vec![b'a'; NAME_MAX];
        let mut path = Vec::new();
        while path.len() + NAME_MAX + 1 < PATH_MAX {
            path.extend_from_slice(&name);
            path.push(b'/');
        }
        path.push(b'x');
        assert!(path.len() < PATH_MAX);
        let link = vec![b'l'; PATH_MAX - 1];
        let pax = xattr(&[b'n'; XATTR_NAME_MAX], XATTR_SIZE_MAX);
        assert_eq!(check_member(&path, Some(&link), &pax), Ok(()));
    }

    #[test]
    fn each_bound_is_named_when_broken() {
        let long_path = vec![b'a'; PATH_MAX];
        let mut split = Vec::new();
        while split.len() < PATH_MAX {
            split.extend_from_slice(b"abc/");
        }
        assert_eq!(
            check_member(&split, None, &[]),
            Err(Broke::Path { had: split.len() })
        );
        assert_eq!(
            check_member(&long_path[..300], None, &[]),
            Err(Broke::Name { had: 300 })
        );
        assert_eq!(
            check_member(b"ok", Some(&long_path), &[]),
            Err(Broke::Link { had: PATH_MAX })
        );
        assert_eq!(
            check_member(b"ok", None, &xattr(&[b'n'; 1 << 20], 1)),
            Err(Broke::XattrName { had: 1 << 20 })
        );
        assert_eq!(
            check_member(b"ok", None, &xattr(b"user.x", XATTR_SIZE_MAX + 1)),
            Err(Broke::XattrValue {
                had: XATTR_SIZE_MAX + 1
            })
        );
        let text = Broke::XattrName { had: 1 << 20 }.to_string();
        assert!(
            text.contains("XATTR_NAME_MAX") && text.contains("1048576"),
            "{text}"
        );
    }

    #[test]
    fn shown_names_are_cut() {
        assert_eq!(shown(b"short", 10), "short");
        assert_eq!(shown(&[b'x'; 20], 4), "xxxx... (20 bytes)");
    }
}
