//! Lexical normalisation of tar member names (pure, no syscalls).
//!
//! Rules (docker/containerd `filepath.Clean(filepath.Join("/", name))`, minus
//! their silent clamping):
//! - leading `/` are stripped, so `/abs/x` lands at `abs/x` inside the layer;
//! - empty and `.` components are dropped, so `./a//b/` is `a/b`;
//! - `..` pops the previous component; a `..` with nothing left to pop escapes
//!   the root and the entry is refused (`../x`, `a/../../x`, `/../x`), while a
//!   `..` that stays inside is accepted (`a/../b` is `b`). Clean is purely
//!   lexical: `l/../x` is `x` even when `l` is a symlink, as in containerd.
//! - a NUL byte is refused (the kernel would truncate the name there).
//!
//! The result is never trusted on its own: every parent is still resolved
//! beneath the layer root by the kernel (see `fsops`), because symlinks
//! written earlier in the layer can redirect a clean name.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// A member name after cleaning: components without `""`, `.` or `..`.
/// Empty means the layer root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CleanPath {
    comps: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathError {
    /// A `..` climbed above the root.
    Escapes,
    /// NUL byte in the name.
    Invalid,
}

impl CleanPath {
    pub(super) fn parse(raw: &[u8]) -> Result<Self, PathError> {
        if raw.contains(&0) {
            return Err(PathError::Invalid);
        }
        let mut comps: Vec<Vec<u8>> = Vec::new();
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    if comps.pop().is_none() {
                        return Err(PathError::Escapes);
                    }
                }
                name => comps.push(name.to_vec()),
            }
        }
        Ok(Self { comps })
    }

    pub(super) fn components(&self) -> &[Vec<u8>] {
        &self.comps
    }

    /// Parent components and final name; `None` for the root.
    pub(super) fn split_last(&self) -> Option<(&[Vec<u8>], &OsStr)> {
        let (last, parent) = self.comps.split_last()?;
        Some((parent, OsStr::from_bytes(last)))
    }

    /// The parent as a new path (the root's parent is the root).
    pub(super) fn parent(&self) -> CleanPath {
        let n = self.comps.len().saturating_sub(1);
        CleanPath {
            comps: self.comps[..n].to_vec(),
        }
    }

    /// Path relative to the root, `.` for the root, as handed to openat2.
    pub(super) fn to_relative(&self) -> Vec<u8> {
        if self.comps.is_empty() {
            return b".".to_vec();
        }
        self.comps.join(&b'/')
    }
}

/// Joins already-clean components into an openat2 path.
pub(super) fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    if comps.is_empty() {
        return b".".to_vec();
    }
    comps.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> Result<String, PathError> {
        CleanPath::parse(s.as_bytes()).map(|p| String::from_utf8(p.to_relative()).unwrap())
    }

    #[test]
    fn plain_and_dotted_names_clean_to_relative() {
        assert_eq!(clean("a/b/c").unwrap(), "a/b/c");
        assert_eq!(clean("./a//b/").unwrap(), "a/b");
        assert_eq!(clean("./").unwrap(), ".");
        assert_eq!(clean("/").unwrap(), ".");
        assert_eq!(clean("").unwrap(), ".");
    }

    #[test]
    fn absolute_names_are_stripped_to_relative() {
        assert_eq!(clean("/abs/x").unwrap(), "abs/x");
        assert_eq!(clean("///etc/passwd").unwrap(), "etc/passwd");
    }

    #[test]
    fn dotdot_inside_root_is_accepted() {
        assert_eq!(clean("a/../b").unwrap(), "b");
        assert_eq!(clean("a/b/../../c").unwrap(), "c");
        assert_eq!(clean("a/..").unwrap(), ".");
    }

    #[test]
    fn dotdot_above_root_is_refused() {
        for name in [
            "..",
            "../x",
            "a/../../x",
            "/../x",
            "./../x",
            "a/b/../../../x",
        ] {
            assert_eq!(clean(name), Err(PathError::Escapes), "{name}");
        }
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(clean("a\0b"), Err(PathError::Invalid));
    }

    #[test]
    fn split_last_gives_parent_and_name() {
        let p = CleanPath::parse(b"a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(join(parent), b"a/b");
        assert_eq!(name, "c");
        assert!(CleanPath::parse(b"./").unwrap().split_last().is_none());
        assert_eq!(p.parent().to_relative(), b"a/b");
    }
}
