//! The workspace's user namespace as the `idmap` setting asks for it, and
//! the ID mapping that resolves to on this node. `cvmd run` and
//! `cvmd rootfs --idmap` read it the same way.

use std::path::Path;

use crate::bundle::RuntimeFlavor;
use crate::rootfs::IdMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMapSetting {
    /// `none`: no mapping in the bundle; sysbox-runc then allocates its
    /// own (the sysbox-runc contract). Refused under runc, where it would
    /// mean the node's root.
    None,
    Auto,
    Explicit(IdMap),
    /// `host-unsafe`: runc with no user namespace at all; a workspace
    /// root that escapes is the node's root. Only by this name.
    HostUnsafe,
}

/// The spelling of [`IdMapSetting::HostUnsafe`].
pub const HOST_UNSAFE: &str = "host-unsafe";

/// `none`, `auto`, `host-unsafe` or HOST_UID[:HOST_GID[:SIZE]].
impl std::str::FromStr for IdMapSetting {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "none" => Ok(IdMapSetting::None),
            "auto" => Ok(IdMapSetting::Auto),
            HOST_UNSAFE => Ok(IdMapSetting::HostUnsafe),
            explicit => explicit.parse().map(IdMapSetting::Explicit),
        }
    }
}

impl IdMapSetting {
    /// Whether the workspace runs in the node's user namespace.
    pub fn host_userns(self) -> bool {
        self == IdMapSetting::HostUnsafe
    }

    /// Whether a mapping goes into the bundle (runc then needs user
    /// namespaces).
    pub fn maps(self) -> bool {
        matches!(self, IdMapSetting::Auto | IdMapSetting::Explicit(_))
    }

    /// Whether this setting can run under `flavor`: `none` needs
    /// sysbox-runc to allocate a mapping, and sysbox-runc always makes a
    /// user namespace.
    pub fn fits(self, flavor: RuntimeFlavor) -> Result<(), String> {
        match (self, flavor) {
            (IdMapSetting::None, RuntimeFlavor::Runc) => Err(format!(
                "none leaves the ID mapping to sysbox-runc, and under runc the workspace's root would be the node's root: leave it unset (auto: a user namespace with the workspace's own ID range), or set {HOST_UNSAFE} to accept that"
            )),
            (IdMapSetting::HostUnsafe, RuntimeFlavor::Sysbox) => Err(format!(
                "{HOST_UNSAFE} applies to runc only: sysbox-runc always runs the workspace in a user namespace; use auto or none"
            )),
            _ => Ok(()),
        }
    }

    /// The ID mapping this asks for; `auto` is the workspace's own range
    /// on the node (`identity` in the cache's table of ranges); `none`
    /// (sysbox allocates) and `host-unsafe` put none in the bundle.
    pub async fn resolve(
        self,
        cache_dir: &Path,
        identity: &str,
    ) -> Result<Option<IdMap>, crate::store::StoreError> {
        Ok(match self {
            IdMapSetting::None | IdMapSetting::HostUnsafe => None,
            IdMapSetting::Auto => {
                Some(crate::store::idranges::allocate(cache_dir, identity).await?)
            }
            IdMapSetting::Explicit(m) => Some(m),
        })
    }
}
