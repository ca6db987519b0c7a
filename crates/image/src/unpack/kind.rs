//! What a tar header asks for (pure, no syscalls).

/// The filesystem object an entry creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// PAX global header: metadata for the whole archive, nothing to create.
    Ignore,
    Unsupported(u8),
}

/// Decides by the type flag (POSIX ustar / GNU tar).
pub(super) fn kind_of(type_flag: u8, raw_name: &[u8]) -> Kind {
    match type_flag {
        // Pre-POSIX tar marked directories only by a trailing slash on an
        // old-style regular file; Go's archive/tar reads them the same way.
        b'\0' if raw_name.ends_with(b"/") => Kind::Dir,
        // '7' is "contiguous file", a regular file everywhere but old
        // Masscomp; 'S' is GNU sparse, expanded by `sparse`.
        b'0' | b'\0' | b'7' | b'S' => Kind::File,
        b'1' => Kind::Hardlink,
        b'2' => Kind::Symlink,
        b'3' => Kind::CharDevice,
        b'4' => Kind::BlockDevice,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        b'g' => Kind::Ignore,
        other => Kind::Unsupported(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_flags_map_to_kinds() {
        assert_eq!(kind_of(b'0', b"f"), Kind::File);
        assert_eq!(kind_of(b'\0', b"f"), Kind::File);
        assert_eq!(kind_of(b'\0', b"d/"), Kind::Dir);
        assert_eq!(kind_of(b'7', b"f"), Kind::File);
        assert_eq!(kind_of(b'S', b"f"), Kind::File);
        assert_eq!(kind_of(b'1', b"h"), Kind::Hardlink);
        assert_eq!(kind_of(b'2', b"l"), Kind::Symlink);
        assert_eq!(kind_of(b'3', b"c"), Kind::CharDevice);
        assert_eq!(kind_of(b'4', b"b"), Kind::BlockDevice);
        assert_eq!(kind_of(b'5', b"d"), Kind::Dir);
        assert_eq!(kind_of(b'6', b"p"), Kind::Fifo);
        assert_eq!(kind_of(b'g', b"pax"), Kind::Ignore);
        assert_eq!(kind_of(b'V', b"vol"), Kind::Unsupported(b'V'));
        assert_eq!(kind_of(b'D', b"dump"), Kind::Unsupported(b'D'));
    }
}
