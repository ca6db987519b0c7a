//! Pure decisions of rootfs assembly: which mode, which ID mapping, the
//! overlay lower stack and its options. No syscalls here.

use super::{IdMap, IdMapMode, Mode, ModePreference};

/// `statfs(2)` magic of overlayfs (`include/uapi/linux/magic.h`).
pub const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Overlayfs refuses more lower layers than this (`OVL_MAX_STACK`,
/// fs/overlayfs/params.h).
pub const MAX_LAYERS: usize = 500;

/// What was found about the workspace before choosing a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The workspace dir lives on overlayfs: the upper dir of a nested
    /// overlay must not be on overlayfs (it lacks the tmpfile, xattr and
    /// d_type guarantees overlayfs checks for; the mount fails or degrades).
    pub workspace_on_overlay: bool,
    /// A previous run left a flat copy (the workspace's disk), and it is
    /// kept (no reset).
    pub has_flat_disk: bool,
    /// Number of layers.
    pub layers: usize,
}

/// Chooses the mode and says why, or refuses an explicit Overlay request
/// that cannot work.
pub fn choose_mode(pref: ModePreference, facts: Facts) -> Result<(Mode, &'static str), String> {
    let overlay_blocker = if facts.workspace_on_overlay {
        Some("the workspace dir is on overlayfs (nested overlay)")
    } else if facts.layers > MAX_LAYERS {
        Some("the image has more layers than overlayfs stacks (500)")
    } else {
        None
    };
    match pref {
        ModePreference::Flat => Ok((Mode::Flat, "flat mode requested")),
        ModePreference::Overlay => match overlay_blocker {
            Some(reason) => Err(reason.to_string()),
            None => Ok((Mode::Overlay, "overlay mode requested")),
        },
        ModePreference::Auto => match overlay_blocker {
            Some(reason) => Ok((Mode::Flat, reason)),
            // Switching a workspace from its flat disk to an overlay would
            // hide the user's changes; a reset is the explicit way out.
            None if facts.has_flat_disk => Ok((
                Mode::Flat,
                "the workspace disk is a flat copy from an earlier run (reset to switch)",
            )),
            None => Ok((Mode::Overlay, "overlay is available")),
        },
    }
}

/// The sysbox-runc contract (docs/ARCHITECTURE.md): one range from container ID 0, size at
/// least 65536, host ID not 0, and the range must fit in 32 bits.
pub fn validate_idmap(map: &IdMap) -> Result<(), String> {
    if map.host_uid == 0 || map.host_gid == 0 {
        return Err("host uid/gid 0 maps the container's root to the host's root".into());
    }
    if map.size < 65536 {
        return Err(format!(
            "size {} is below 65536 (sysbox contract)",
            map.size
        ));
    }
    for (what, base) in [("uid", map.host_uid), ("gid", map.host_gid)] {
        if base
            .checked_add(map.size - 1)
            .is_none_or(|end| end == u32::MAX)
        {
            return Err(format!(
                "host {what} {base} + size {} overflows 32 bits",
                map.size
            ));
        }
    }
    Ok(())
}

/// Which ID mapping technique applies, given whether ID-mapped mounts of
/// the layer file system were found to work.
pub fn choose_idmap(idmap: Option<&IdMap>, idmapped_mounts_work: bool) -> IdMapMode {
    match (idmap, idmapped_mounts_work) {
        (None, _) => IdMapMode::None,
        (Some(_), true) => IdMapMode::IdMappedMount,
        (Some(_), false) => IdMapMode::ChownedCopy,
    }
}

/// Lower dirs in overlayfs order: topmost first (`lowerdir=top:...:bottom`,
/// and each `lowerdir+` appends below the previous one).
pub fn overlay_lower_order<T: Clone>(bottom_to_top: &[T]) -> Vec<T> {
    bottom_to_top.iter().rev().cloned().collect()
}

/// Overlay options set on every mount, with why:
/// - `index=off`: the index records file handles of the lower layers in the
///   upper dir and makes a later mount fail (ESTALE) when the lower stack
///   changed, e.g. an image update under a kept workspace disk; it also
///   depends on the kernel's CONFIG_OVERLAY_FS_INDEX default. Off makes the
///   behaviour the same everywhere.
/// - `redirect_dir=off`: a renamed lower dir would be stored as a redirect
///   xattr naming a lower path; the upper dir would then depend on that
///   exact lower stack. Off makes rename(2) of a lower dir return EXDEV and
///   `mv` copies instead, so the upper dir stays self-contained.
/// - `metacopy=off`: metacopy copies up only metadata and keeps reading data
///   from the lower file, again tying the upper to one lower stack (and it
///   trusts redirect xattrs in the upper).
/// - `xino=off`: with many lower layers on one fs the xino bits would not
///   fit and overlay warns on every mount; inode numbers stay the layer's.
pub const OVERLAY_FLAGS: [(&str, &str); 4] = [
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("xino", "off"),
];

/// Option string for classic `mount(2)` run with the cwd at the workspace
/// dir, naming lower layers by their short relative symlinks `l/N` (N the
/// index bottom to top) so 500 layers stay well below the page-size limit
/// of the mount data.
pub fn classic_options(layers: usize, lower_prefix: &str) -> String {
    let lowers: Vec<String> = overlay_lower_order(&(0..layers).collect::<Vec<_>>())
        .into_iter()
        .map(|i| format!("{lower_prefix}/{i}"))
        .collect();
    let mut opts = format!("lowerdir={},upperdir=upper,workdir=work", lowers.join(":"));
    for (k, v) in OVERLAY_FLAGS {
        opts.push_str(&format!(",{k}={v}"));
    }
    opts
}

/// Page size bound on the mount data of mount(2) (`copy_mount_options`
/// copies at most one page).
pub const MOUNT_DATA_MAX: usize = 4095;

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(on_overlay: bool, flat: bool) -> Facts {
        Facts {
            workspace_on_overlay: on_overlay,
            has_flat_disk: flat,
            layers: 3,
        }
    }

    #[test]
    fn auto_prefers_overlay_and_falls_back() {
        let m = |f| choose_mode(ModePreference::Auto, f).unwrap().0;
        assert_eq!(m(facts(false, false)), Mode::Overlay);
        assert_eq!(m(facts(true, false)), Mode::Flat);
        assert_eq!(m(facts(false, true)), Mode::Flat);
        let many = Facts {
            layers: 501,
            ..facts(false, false)
        };
        assert_eq!(m(many), Mode::Flat);
    }

    #[test]
    fn explicit_overlay_on_overlay_is_refused() {
        assert!(choose_mode(ModePreference::Overlay, facts(true, false)).is_err());
        assert_eq!(
            choose_mode(ModePreference::Overlay, facts(false, true))
                .unwrap()
                .0,
            Mode::Overlay
        );
        assert_eq!(
            choose_mode(ModePreference::Flat, facts(false, false))
                .unwrap()
                .0,
            Mode::Flat
        );
    }

    #[test]
    fn idmap_validation_follows_sysbox_contract() {
        let ok = IdMap {
            host_uid: 100000,
            host_gid: 100000,
            size: 65536,
        };
        assert!(validate_idmap(&ok).is_ok());
        assert!(validate_idmap(&IdMap { host_uid: 0, ..ok }).is_err());
        assert!(validate_idmap(&IdMap { size: 1000, ..ok }).is_err());
        assert!(validate_idmap(&IdMap {
            host_gid: u32::MAX - 10,
            ..ok
        })
        .is_err());
    }

    #[test]
    fn idmap_mode_choice() {
        let m = IdMap {
            host_uid: 1,
            host_gid: 1,
            size: 65536,
        };
        assert_eq!(choose_idmap(None, true), IdMapMode::None);
        assert_eq!(choose_idmap(Some(&m), true), IdMapMode::IdMappedMount);
        assert_eq!(choose_idmap(Some(&m), false), IdMapMode::ChownedCopy);
    }

    #[test]
    fn lower_order_is_top_first() {
        assert_eq!(overlay_lower_order(&["a", "b", "c"]), vec!["c", "b", "a"]);
    }

    #[test]
    fn classic_options_for_500_layers_fit_a_page() {
        let o = classic_options(3, "l");
        assert_eq!(
            o,
            "lowerdir=l/2:l/1:l/0,upperdir=upper,workdir=work,index=off,redirect_dir=off,\
             metacopy=off,xino=off"
        );
        assert!(classic_options(MAX_LAYERS, "l").len() <= MOUNT_DATA_MAX);
    }
}
