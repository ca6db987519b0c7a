//! Where the pods' cgroups are: runc puts a relative cgroupsPath below the
//! cgroup its caller is in, in every hierarchy, so the node's pods stay
//! inside whatever limits this test process runs under.

use std::path::{Path, PathBuf};

/// `<root>/<hierarchy>/<own path>/<parent>` for each line of a
/// /proc/self/cgroup text (`ID:CONTROLLERS:PATH`; v2's empty controller
/// list is the hierarchy mounted at `unified` on a hybrid host).
pub fn parent_dirs(proc_self_cgroup: &str, root: &Path, parent: &str) -> Vec<PathBuf> {
    proc_self_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hierarchy = match controllers {
                "" => "unified",
                c => c.trim_start_matches("name="),
            };
            Some(
                root.join(hierarchy)
                    .join(path.trim_start_matches('/'))
                    .join(parent),
            )
        })
        .collect()
}

/// The pods' parent in each hierarchy this host has mounted.
pub fn own_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let root = Path::new("/sys/fs/cgroup");
    parent_dirs(&own, root, parent)
        .into_iter()
        .filter(|d| d.parent().is_some_and(Path::is_dir))
        .collect()
}

/// The cgroups below `dirs` (one level: the pods').
pub fn children(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn the_parent_is_below_the_own_cgroup_in_every_hierarchy() {
    let own = "9:name=systemd:/\n4:memory:/sandbox/x\n0::/\n";
    assert_eq!(
        parent_dirs(own, Path::new("/cg"), "cvmd-n1"),
        [
            PathBuf::from("/cg/systemd/cvmd-n1"),
            PathBuf::from("/cg/memory/sandbox/x/cvmd-n1"),
            PathBuf::from("/cg/unified/cvmd-n1"),
        ]
    );
}
