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
    /// Directory the relative lowerdirs of `data` are resolved from.
    pub cwd: Option<String>,
}

/// mount(2) copies at most one page of data.
const MAX_DATA: usize = 4095;

/// Shortens an overlay `data` too long for mount(2) the way containerd
/// does (mount/mount_linux.go, compactLowerdirOption): the lowerdirs
/// relative to their common parent directory, to be mounted from there.
pub fn compact(data: &str) -> Option<(String, String)> {
    let options: Vec<&str> = data.split(',').collect();
    let lower = options.iter().find_map(|o| o.strip_prefix("lowerdir="))?;
    let dirs: Vec<&str> = lower.split(':').collect();
    let mut prefix = Path::new(dirs[0]).parent()?;
    while !dirs.iter().all(|d| Path::new(d).starts_with(prefix)) {
        prefix = prefix.parent()?;
    }
    if prefix == Path::new("/") {
        return None;
    }
    let relative: Vec<String> = dirs
        .iter()
        .map(|d| {
            Path::new(d)
                .strip_prefix(prefix)
                .map(|r| r.display().to_string())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let data = options
        .iter()
        .map(|o| match o.strip_prefix("lowerdir=") {
            Some(_) => format!("lowerdir={}", relative.join(":")),
            None => o.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    Some((prefix.display().to_string(), data))
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
            let mut data = data.join(",");
            let mut cwd = None;
            if data.len() > MAX_DATA {
                let (dir, short) = compact(&data)
                    .filter(|(_, short)| short.len() <= MAX_DATA)
                    .ok_or_else(|| {
                        format!(
                            "the overlay options are {} bytes, more than mount(2) takes, even with the lower dirs made relative",
                            data.len()
                        )
                    })?;
                (cwd, data) = (Some(dir), short);
            }
            Ok(MountPlan {
                fstype: Some("overlay".into()),
                source: "overlay".into(),
                flags,
                data,
                remount_ro: false,
                cwd,
            })
        }
        "bind" => Ok(MountPlan {
            fstype: None,
            source: source.to_string(),
            flags: flags | MsFlags::MS_BIND,
            data: String::new(),
            remount_ro: readonly,
            cwd: None,
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
        if let Some(cwd) = &plan.cwd {
            // The relative lowerdirs need the cwd there; a thread with its
            // own fs context (CLONE_FS) changes it without touching the
            // process's, as the native overlay mount does.
            let (cwd, plan, target) = (cwd.clone(), plan.clone(), target.to_path_buf());
            return std::thread::spawn(move || -> std::io::Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::unistd::chdir(cwd.as_str())?;
                Kernel.mount(&MountPlan { cwd: None, ..plan }, &target)
            })
            .join()
            .map_err(|_| std::io::Error::other("mount thread panicked"))?;
        }
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
    fn long_overlay_data_is_made_relative_to_the_snapshots_dir() {
        let root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let lowers: Vec<String> = (1..=80).rev().map(|i| format!("{root}/{i}/fs")).collect();
        let options = opts(&[
            "index=off",
            &format!("workdir={root}/81/work"),
            &format!("upperdir={root}/81/fs"),
            &format!("lowerdir={}", lowers.join(":")),
        ]);
        let p = plan("overlay", "overlay", &options).unwrap();
        assert_eq!(p.cwd.as_deref(), Some(root));
        assert!(p.data.len() <= MAX_DATA);
        assert!(p.data.contains("lowerdir=80/fs:79/fs:"), "{}", p.data);
        assert!(p.data.contains(&format!("upperdir={root}/81/fs")));
        let short = plan("overlay", "overlay", &opts(&["lowerdir=/a/1:/a/2"])).unwrap();
        assert_eq!(short.cwd, None);
        assert_eq!(compact("lowerdir=/a/1:/b/2"), None, "no common dir but /");
    }

    #[test]
    fn other_mount_types_are_refused() {
        let e = plan("fuse.stargz", "x", &[]).unwrap_err();
        assert!(e.contains("\"fuse.stargz\" is not supported"), "{e}");
    }
}
