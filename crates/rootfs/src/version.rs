//! Kernel releases as numbers, and the ones the mounts here need: which
//! mount a kernel can make is decided by its version where probing would
//! mean mounting.

/// `major.minor.patch` of a release string like `6.18.44-fc-v669` or
/// `5.4.0-1049-gke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(release: &str) -> Option<Version> {
        let numeric = release
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?;
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Version(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// ID-mapped mounts (mount_setattr) arrived in 5.12.
pub const IDMAPPED_MOUNTS: Version = Version(5, 12, 0);
/// overlayfs accepts ID-mapped lower layers from 5.19.
pub const OVERLAY_IDMAPPED: Version = Version(5, 19, 0);
