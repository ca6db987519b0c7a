//! Cgroup delegation to the workspace's root under runc with a user
//! namespace: between `runc create` and `runc start`, the created init's
//! cgroup directories are given to the mapped root, as systemd's
//! `Delegate=yes` does (systemd.io/CGROUP_DELEGATION): the directory
//! itself and the files that move processes and create children
//! (`cgroup.procs`, `tasks`, `cgroup.subtree_control`, `cgroup.threads`).
//! Root in the user namespace can then build its own tree below (systemd
//! dies at once as PID 1 otherwise: it cannot create `init.scope`), while
//! the limits runc set at the workspace's own level stay root-owned, so
//! the workspace cannot raise them; its children are bounded by them.
//!
//! sysbox-runc delegates itself, and plain runc without a user namespace
//! needs none (its root is the node's root).

use std::path::{Path, PathBuf};

use crate::rootfs::IdMap;

/// Files of a delegated cgroup that its new owner may write.
pub const DELEGATED_FILES: &[&str] = &[
    "cgroup.procs",
    "tasks",
    "cgroup.subtree_control",
    "cgroup.threads",
];

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("cannot read {path:?} to find the workspace's cgroups: {source}; is the workspace's init still running?")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give the workspace's cgroup {path:?} to its root ({uid}:{gid}): {source}; systemd cannot run in a user namespace without it: check that /sys/fs/cgroup is writable in the outer container")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
}

/// A cgroup file system mounted here: its root inside the hierarchy, where
/// it is mounted, and its controllers (`name=systemd` counted as one;
/// empty for cgroup2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub root: String,
    pub mountpoint: PathBuf,
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup mounts in a mountinfo text (proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rest: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || rest.len() < 3 {
            continue;
        }
        let v2 = match rest[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        let mut controllers: Vec<String> = if v2 {
            Vec::new()
        } else {
            rest[2]
                .split(',')
                .filter(|o| is_controller(o))
                .map(String::from)
                .collect()
        };
        controllers.sort();
        out.push(CgroupMount {
            root: unescape(fields[3]),
            mountpoint: PathBuf::from(unescape(fields[4])),
            controllers,
            v2,
        });
    }
    out
}

/// Whether a v1 cgroup mount option names a controller (or a named
/// hierarchy), rather than a flag or a setting like `release_agent=`.
fn is_controller(opt: &str) -> bool {
    if opt.starts_with("name=") {
        return true;
    }
    let flag = matches!(
        opt,
        "rw" | "ro"
            | "noprefix"
            | "clone_children"
            | "xattr"
            | "nsdelegate"
            | "cpuset_v2_mode"
            | "favordynmods"
    );
    !flag && !opt.contains('=')
}

/// A mountinfo field, unescaped (`rootfs::mountinfo`'s rule).
fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&crate::rootfs::mountinfo::unescape(s.as_bytes())).into_owned()
}

/// Where a process's cgroups are: each `/proc/PID/cgroup` line matched to
/// the mount of its hierarchy here, with the directory in it (the path
/// taken relative to that mount's root); hierarchies mounted nowhere here
/// are left out.
pub fn placements<'m>(
    proc_cgroup: &str,
    mounts: &'m [CgroupMount],
) -> Vec<(&'m CgroupMount, PathBuf)> {
    use procfs_core::FromBufRead;
    // procfs-core reads the lines; a text that is not the kernel's gives
    // no placement (the callers then find no cgroup and say so).
    let Ok(groups) = procfs_core::ProcessCGroups::from_buf_read(proc_cgroup.as_bytes()) else {
        tracing::debug!("not a /proc/PID/cgroup text");
        return Vec::new();
    };
    let mut out = Vec::new();
    for group in groups {
        let mount = if group.controllers.is_empty() {
            mounts.iter().find(|m| m.v2)
        } else {
            let mut want: Vec<&str> = group.controllers.iter().map(String::as_str).collect();
            want.sort_unstable();
            mounts.iter().find(|m| {
                !m.v2
                    && m.controllers
                        .iter()
                        .map(String::as_str)
                        .eq(want.iter().copied())
            })
        };
        let Some(mount) = mount else {
            // A hierarchy nobody mounted here (net_cls on many hosts) is
            // not mounted in the workspace either: nothing writes to it.
            tracing::debug!(
                hierarchy = group.hierarchy,
                "cgroup hierarchy not mounted here"
            );
            continue;
        };
        out.push((
            mount,
            mount
                .mountpoint
                .join(relative(&group.pathname, &mount.root)),
        ));
    }
    out
}

/// The host directories of a process's cgroups ([`placements`]).
pub fn cgroup_dirs(proc_cgroup: &str, mounts: &[CgroupMount]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = placements(proc_cgroup, mounts)
        .into_iter()
        .map(|(_, dir)| dir)
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// `path` below a mount whose root is `root` (both absolute in the
/// hierarchy); a path outside it is taken as is, trimmed of its `/`.
pub(crate) fn relative<'a>(path: &'a str, root: &str) -> &'a str {
    let trimmed = if root == "/" {
        path
    } else {
        path.strip_prefix(root).unwrap_or(path)
    };
    trimmed.trim_start_matches('/')
}

/// Gives the cgroups of `pid` (the created, not yet started init) to the
/// mapped root of `map`; returns the directories delegated.
pub fn delegate(pid: i32, map: &IdMap) -> Result<Vec<PathBuf>, DelegateError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| DelegateError::Read { path, source })
    };
    let mounts = parse_mountinfo(&read(PathBuf::from("/proc/self/mountinfo"))?);
    let dirs = cgroup_dirs(
        &read(PathBuf::from(format!("/proc/{pid}/cgroup")))?,
        &mounts,
    );
    for dir in &dirs {
        chown_delegated(dir, map)?;
    }
    tracing::info!(
        pid,
        dirs = dirs.len(),
        uid = map.host_uid,
        "cgroups delegated to the workspace's root"
    );
    Ok(dirs)
}

fn chown_delegated(dir: &Path, map: &IdMap) -> Result<(), DelegateError> {
    let chown = |path: &Path| {
        std::os::unix::fs::chown(path, Some(map.host_uid), Some(map.host_gid)).map_err(|source| {
            DelegateError::Chown {
                path: path.to_path_buf(),
                uid: map.host_uid,
                gid: map.host_gid,
                source,
            }
        })
    };
    chown(dir)?;
    for name in DELEGATED_FILES {
        let file = dir.join(name);
        // Not every hierarchy has every file (tasks is v1 only).
        if file.exists() {
            chown(&file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 /kubepods/pod1 /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids,release_agent=/x
40 23 0:40 / /proc rw - proc proc rw
";

    #[test]
    fn mounts_are_read_with_their_controllers_and_roots() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert!(m[0].v2 && m[0].controllers.is_empty());
        assert_eq!(m[1].controllers, ["name=systemd"]);
        assert_eq!(m[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[3].root, "/kubepods/pod1");
        assert_eq!(m[4].controllers, ["pids"]);
    }

    #[test]
    fn each_hierarchy_maps_to_its_mount() {
        let m = parse_mountinfo(MOUNTINFO);
        let proc = "\
9:name=systemd:/ws
5:cpuacct,cpu:/ws
4:memory:/kubepods/pod1/ws
3:pids:/ws
2:net_cls,net_prio:/ws
0::/ws
";
        let dirs = cgroup_dirs(proc, &m);
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/cpu,cpuacct/ws",
                "/sys/fs/cgroup/memory/ws",
                "/sys/fs/cgroup/pids/ws",
                "/sys/fs/cgroup/systemd/ws",
                "/sys/fs/cgroup/unified/ws",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_hierarchy_not_mounted_here_is_left_out() {
        let m = parse_mountinfo(MOUNTINFO);
        assert!(cgroup_dirs("1:name=other:/ws\n2:net_cls:/ws\n", &m).is_empty());
    }

    #[test]
    fn escaped_mountpoints_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn delegation_chowns_the_dir_and_the_delegated_files_only_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for f in ["cgroup.procs", "tasks", "memory.limit_in_bytes"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let map = IdMap {
            host_uid: 300_000,
            host_gid: 300_000,
            size: 65536,
        };
        chown_delegated(dir.path(), &map).unwrap();
        use std::os::unix::fs::MetadataExt;
        let uid = |p: &Path| std::fs::metadata(p).unwrap().uid();
        assert_eq!(uid(dir.path()), 300_000);
        assert_eq!(uid(&dir.path().join("cgroup.procs")), 300_000);
        assert_eq!(uid(&dir.path().join("tasks")), 300_000);
        assert_eq!(
            uid(&dir.path().join("memory.limit_in_bytes")),
            0,
            "limits stay root's"
        );
    }
}
