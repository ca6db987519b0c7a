//! Mounting what a snapshotter hands back (`types.Mount`: type, source,
//! options). The translation of options into mount(2) flags and data is a
//! plain function; the syscall sits behind [`MountSys`].

use std::path::Path;

use nix::mount::MsFlags;

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub fstype: Option<String>,
    pub source: String,
    pub flags: MsFlags,
    pub data: String,
    /// A bind mount asked read-only: the kernel ignores MS_RDONLY on the
    /// bind itself, so it takes a remount.
    pub remount_ro: bool,
}

/// The mount(2) call for a snapshotter's mount. Only the kinds the
/// overlayfs snapshotter produces are accepted: `overlay` (a snapshot with
/// parents) and `bind` (one without).
pub fn plan(kind: &str, source: &str, options: &[String]) -> Result<MountPlan, String> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut readonly = false;
    for option in options {
        match option.as_str() {
            "ro" => readonly = true,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            // Propagation is a separate call; the workspace's rootfs needs
            // none of it.
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other.to_string()),
        }
    }
    match kind {
        "overlay" => {
            if readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            Ok(MountPlan {
                fstype: Some("overlay".into()),
                source: "overlay".into(),
                flags,
                data: data.join(","),
                remount_ro: false,
            })
        }
        "bind" => Ok(MountPlan {
            fstype: None,
            source: source.to_string(),
            flags: flags | MsFlags::MS_BIND,
            data: String::new(),
            remount_ro: readonly,
        }),
        other => Err(format!(
            "mount type {other:?} is not supported (cvmd mounts the overlayfs snapshotter's overlay and bind mounts)"
        )),
    }
}

pub trait MountSys {
    fn mount(&self, plan: &MountPlan, target: &Path) -> std::io::Result<()>;
}

pub struct Kernel;

impl MountSys for Kernel {
    fn mount(&self, plan: &MountPlan, target: &Path) -> std::io::Result<()> {
        let data = (!plan.data.is_empty()).then_some(plan.data.as_str());
        nix::mount::mount(
            Some(plan.source.as_str()),
            target,
            plan.fstype.as_deref(),
            plan.flags,
            data,
        )?;
        if plan.remount_ro {
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_become_data() {
        let p = plan(
            "overlay",
            "overlay",
            &opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]),
        )
        .unwrap();
        assert_eq!(p.fstype.as_deref(), Some("overlay"));
        assert_eq!(p.flags, MsFlags::empty());
        assert_eq!(p.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
    }

    #[test]
    fn bind_options_become_flags() {
        let p = plan("bind", "/snap/1/fs", &opts(&["rw", "rbind"])).unwrap();
        assert_eq!(p.fstype, None);
        assert_eq!(p.source, "/snap/1/fs");
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(p.data.is_empty());
        assert!(!p.remount_ro);
        let ro = plan("bind", "/snap/1/fs", &opts(&["ro", "rbind"])).unwrap();
        assert!(ro.remount_ro);
        assert!(!ro.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn other_mount_types_are_refused() {
        let e = plan("fuse.stargz", "x", &[]).unwrap_err();
        assert!(e.contains("\"fuse.stargz\" is not supported"), "{e}");
    }
}
