//! cgroup v1, v2 or hybrid, and whether this container may create child
//! cgroups (delegation): the runtime puts the workspace in one.

use std::path::PathBuf;

use super::{Check, Host};

/// The cgroup mounts, read by the launcher's parser: preflight judges
/// the same mounts the launch then writes to.
pub use crate::launch::cgroups::parse_mountinfo as mounts;
use crate::launch::cgroups::{placements, CgroupMount};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
    Hybrid,
    None,
}

pub fn layout(mounts: &[CgroupMount]) -> Layout {
    let v1 = mounts.iter().any(|m| !m.v2);
    let v2 = mounts.iter().any(|m| m.v2);
    match (v1, v2) {
        (true, true) => Layout::Hybrid,
        (true, false) => Layout::V1,
        (false, true) => Layout::V2,
        (false, false) => Layout::None,
    }
}

/// The directories this process's cgroups are in, one per hierarchy that
/// the runtime writes to: the unified one on v2, the memory, pids and cpu
/// controllers on v1 and hybrid (runc fails on those; named ones it skips).
pub fn own_dirs(
    layout: Layout,
    mounts: &[CgroupMount],
    proc_cgroup: &str,
) -> Vec<(String, String)> {
    const WRITTEN: [&str; 3] = ["memory", "pids", "cpu"];
    placements(proc_cgroup, mounts)
        .into_iter()
        .filter(|(m, _)| {
            if m.v2 {
                layout == Layout::V2
            } else {
                m.controllers.iter().any(|c| WRITTEN.contains(&c.as_str()))
            }
        })
        .map(|(m, dir)| {
            let dir = dir.to_string_lossy();
            (
                m.controllers.join(","),
                dir.trim_end_matches('/').to_string(),
            )
        })
        .collect()
}

pub fn check(host: &dyn Host) -> Check {
    let info = host.read("/proc/self/mountinfo").unwrap_or_default();
    let proc_cgroup = host.read("/proc/self/cgroup").unwrap_or_default();
    let ms = mounts(&info);
    let layout = layout(&ms);
    let dirs = own_dirs(layout, &ms, &proc_cgroup);
    let read_only: Vec<String> = dirs
        .iter()
        .filter(|(_, d)| !host.writable(&host.path(d)))
        .map(|(_, d)| d.clone())
        .collect();
    judge(layout, &dirs, &read_only)
}

pub fn judge(layout: Layout, dirs: &[(String, String)], read_only: &[String]) -> Check {
    let name = "cgroups";
    let kind = match layout {
        Layout::V1 => "v1",
        Layout::V2 => "v2",
        Layout::Hybrid => "hybrid (v1 controllers, v2 unified)",
        Layout::None => {
            return Check::fail(
                name,
                "no cgroup file system is mounted",
                "mount /sys/fs/cgroup in the outer container (privileged containers get it)",
            )
        }
    };
    if dirs.is_empty() {
        return Check::fail(
            name,
            format!("{kind}, but this container's cgroup is not found in /proc/self/cgroup"),
            "run the outer container with the node's cgroup mount (privileged)",
        );
    }
    if !read_only.is_empty() {
        return Check::fail(
            name,
            format!("{kind}, not delegated: {} read-only", read_only.join(", ")),
            "run the outer container privileged so its cgroup is writable (or delegate it: cgroupns with a writable cgroup2 mount)",
        );
    }
    let shown: Vec<PathBuf> = dirs.iter().map(|(_, d)| PathBuf::from(d)).take(1).collect();
    Check::ok(
        name,
        format!(
            "{kind}, delegated ({} writable{})",
            shown[0].display(),
            if dirs.len() > 1 { ", ..." } else { "" }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
    const HYBRID_SELF: &str =
        "12:pids:/job\n8:memory:/job\n4:cpu,cpuacct:/job\n1:name=systemd:/job\n0::/job\n";
    const V2: &str = "40 30 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn layouts() {
        assert_eq!(layout(&mounts(HYBRID)), Layout::Hybrid);
        assert_eq!(layout(&mounts(V2)), Layout::V2);
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(layout(&mounts(&v1)), Layout::V1);
        assert_eq!(layout(&mounts("")), Layout::None);
        assert_eq!(judge(Layout::None, &[], &[]).status, Status::Fail);
    }

    #[test]
    fn own_dirs_per_layout() {
        let ms = mounts(HYBRID);
        let dirs = own_dirs(Layout::Hybrid, &ms, HYBRID_SELF);
        let paths: Vec<&str> = dirs.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/sys/fs/cgroup/pids/job",
                "/sys/fs/cgroup/memory/job",
                "/sys/fs/cgroup/cpu,cpuacct/job"
            ]
        );
        let dirs = own_dirs(Layout::V2, &mounts(V2), "0::/kubepods/pod1/c1\n");
        assert_eq!(dirs[0].1, "/sys/fs/cgroup/kubepods/pod1/c1");
        let dirs = own_dirs(Layout::V2, &mounts(V2), "0::/\n");
        assert_eq!(dirs[0].1, "/sys/fs/cgroup");
    }

    #[test]
    fn read_only_cgroups_are_not_delegated() {
        let dirs = vec![("".to_string(), "/sys/fs/cgroup".to_string())];
        let c = judge(Layout::V2, &dirs, &["/sys/fs/cgroup".into()]);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("not delegated"), "{c:?}");
        let c = judge(Layout::V2, &dirs, &[]);
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.starts_with("v2, delegated"));
    }
}
