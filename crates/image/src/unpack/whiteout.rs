//! Classification of OCI whiteout names (pure, no syscalls).
//!
//! OCI image-spec "Whiteouts": `DIR/.wh.NAME` deletes NAME of lower layers and
//! `DIR/.wh..wh..opq` hides all of DIR's lower content. In overlayfs form
//! (the layer dirs become lowerdirs) they are a 0:0 character device NAME and
//! the xattr `trusted.overlay.opaque=y` on DIR (kernel
//! Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
//! directories").

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::path::CleanPath;

const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Whiteout<'a> {
    /// An ordinary entry.
    None,
    /// Mark the parent directory opaque.
    Opaque,
    /// Put a whiteout device at this name in the parent directory.
    Remove(&'a OsStr),
}

/// The name is a whiteout whose target is empty, `.`, `..`, or spans a `/`
/// (a `.wh.` component that is not the last one).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadWhiteout;

pub(super) fn classify(path: &CleanPath) -> Result<Whiteout<'_>, BadWhiteout> {
    let Some((last, parents)) = path.components().split_last() else {
        return Ok(Whiteout::None);
    };
    // A directory called `.wh.x` would be a whiteout with `/` after `.wh.`;
    // no conforming layer has one, and accepting it would let a whiteout
    // name reach into a subdirectory.
    if parents.iter().any(|c| c.starts_with(PREFIX)) {
        return Err(BadWhiteout);
    }
    if last.as_slice() == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    match last.strip_prefix(PREFIX) {
        None => Ok(Whiteout::None),
        Some(b"" | b"." | b"..") => Err(BadWhiteout),
        Some(name) => Ok(Whiteout::Remove(OsStr::from_bytes(name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(name: &str) -> Result<Whiteout<'static>, BadWhiteout> {
        let p = Box::leak(Box::new(CleanPath::parse(name.as_bytes()).unwrap()));
        classify(p)
    }

    #[test]
    fn ordinary_names_are_not_whiteouts() {
        assert_eq!(of("a/b"), Ok(Whiteout::None));
        assert_eq!(of("a/x.wh.b"), Ok(Whiteout::None));
        assert_eq!(of("./"), Ok(Whiteout::None));
    }

    #[test]
    fn whiteout_and_opaque_are_recognised() {
        assert_eq!(of("a/.wh.b"), Ok(Whiteout::Remove(OsStr::new("b"))));
        assert_eq!(of(".wh.b"), Ok(Whiteout::Remove(OsStr::new("b"))));
        assert_eq!(of("a/.wh..wh..opq"), Ok(Whiteout::Opaque));
        assert_eq!(of(".wh..wh..opq"), Ok(Whiteout::Opaque));
        // Only the exact opaque marker is special; other `.wh..wh.` names
        // whiteout a file with that name.
        assert_eq!(
            of("a/.wh..wh.plnk"),
            Ok(Whiteout::Remove(OsStr::new(".wh.plnk")))
        );
    }

    #[test]
    fn malformed_whiteouts_are_refused() {
        for name in ["a/.wh..", "a/.wh...", "a/.wh.", ".wh.../x", "a/.wh.b/c"] {
            assert_eq!(of(name), Err(BadWhiteout), "{name}");
        }
    }
}
