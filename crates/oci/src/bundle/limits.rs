//! CPU and memory limits: parsing the requested ones, and reading the
//! outer container's own from its cgroup (v2 `cpu.max`/`memory.max`, v1
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`/`memory.limit_in_bytes`), so that
//! the inner container is given what the outer one really has.

use std::path::{Path, PathBuf};

use super::BundleError;

/// The CFS period we ask for; the kernel's default (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// cgroup v1 reports "no limit" as the largest page-aligned i64
/// (9223372036854771712); anything from 2^62 up is taken as unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPUs, possibly fractional (1.5 = 150 ms per 100 ms).
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
}

impl Limits {
    /// Requested values where given, else the outer container's.
    pub fn or(self, outer: Limits) -> Limits {
        Limits {
            cpus: self.cpus.or(outer.cpus),
            memory: self.memory.or(outer.memory),
        }
    }
}

/// `2`, `1.5`, `0.25` → CPUs.
pub fn parse_cpus(v: &str) -> Result<f64, BundleError> {
    let bad = |reason: &str| BundleError::BadCpus {
        value: v.into(),
        reason: reason.into(),
    };
    let n: f64 = v.trim().parse().map_err(|_| bad("not a number"))?;
    if !n.is_finite() || n < 0.01 {
        return Err(bad("must be at least 0.01"));
    }
    if n > 4096.0 {
        return Err(bad("more than 4096 CPUs"));
    }
    Ok(n)
}

/// CPUs → (quota, period) in microseconds.
pub fn cpu_quota(cpus: f64) -> (i64, u64) {
    // Saturating float-to-int `as` is the clamp wanted: config bounds cpus.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let quota = (cpus * CPU_PERIOD_US as f64).round() as i64;
    (quota.max(1000), CPU_PERIOD_US)
}

/// cgroup v2 `cpu.max`: "max 100000" or "150000 100000".
pub fn parse_cpu_max(s: &str) -> Option<Option<f64>> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next().map_or(Some(CPU_PERIOD_US), |p| p.parse().ok())?;
    if quota == "max" {
        return Some(None);
    }
    let quota: u64 = quota.parse().ok()?;
    (period > 0).then(|| Some(quota as f64 / period as f64))
}

/// cgroup v2 `memory.max`: "max" or bytes.
pub fn parse_memory_max(s: &str) -> Option<Option<u64>> {
    match s.trim() {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// cgroup v1 quota and period: quota -1 is unlimited.
pub fn parse_v1_cpu(quota: &str, period: &str) -> Option<Option<f64>> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    if quota < 0 {
        return Some(None);
    }
    (period > 0).then(|| Some(quota as f64 / period as f64))
}

/// cgroup v1 `memory.limit_in_bytes`: a huge value is unlimited.
pub fn parse_v1_memory(s: &str) -> Option<Option<u64>> {
    let n: u64 = s.trim().parse().ok()?;
    Some((n < V1_UNLIMITED).then_some(n))
}

/// `/proc/self/cgroup` → (unified path, v1 controller → path).
pub fn parse_proc_cgroup(s: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut unified = None;
    let mut v1 = Vec::new();
    for line in s.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            unified = Some(path.to_string());
        } else {
            for c in ctrls.split(',') {
                v1.push((c.to_string(), path.to_string()));
            }
        }
    }
    (unified, v1)
}

/// The dir of a cgroup under a hierarchy's mount: the path from
/// `/proc/self/cgroup` if it exists there, else the mount's root (a
/// container that sees its own cgroup at the root, without a cgroup
/// namespace to say so).
fn cgroup_dir(mount: &Path, path: &str) -> PathBuf {
    let joined = mount.join(path.trim_start_matches('/'));
    if joined.is_dir() {
        joined
    } else {
        mount.to_path_buf()
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// The limits of the cgroup that `proc_cgroup` (the text of
/// `/proc/self/cgroup`) names, read under `root` (`/` in production, a
/// fake tree in tests). v2 controllers win where enabled; an unreadable
/// or unparsable file counts as no limit.
pub fn read_limits(root: &Path, proc_cgroup: &str) -> Limits {
    let fs = root.join("sys/fs/cgroup");
    let (unified, v1) = parse_proc_cgroup(proc_cgroup);
    let mut out = Limits::default();
    let mut cpu_seen = false;
    let mut mem_seen = false;
    if let Some(path) = unified {
        let dir = cgroup_dir(&fs, &path);
        if let Some(v) = read(&dir.join("cpu.max")).and_then(|s| parse_cpu_max(&s)) {
            out.cpus = v;
            cpu_seen = true;
        }
        if let Some(v) = read(&dir.join("memory.max")).and_then(|s| parse_memory_max(&s)) {
            out.memory = v;
            mem_seen = true;
        }
    }
    let v1_path = |ctrl: &str| v1.iter().find(|(c, _)| c == ctrl).map(|(_, p)| p.clone());
    if !cpu_seen {
        if let Some(path) = v1_path("cpu") {
            // Mounted as `cpu`, or co-mounted as `cpu,cpuacct` with `cpu` a link.
            let mount = ["cpu", "cpu,cpuacct", "cpuacct,cpu"]
                .iter()
                .map(|m| fs.join(m))
                .find(|m| m.is_dir());
            if let Some(dir) = mount.map(|m| cgroup_dir(&m, &path)) {
                if let (Some(q), Some(p)) = (
                    read(&dir.join("cpu.cfs_quota_us")),
                    read(&dir.join("cpu.cfs_period_us")),
                ) {
                    out.cpus = parse_v1_cpu(&q, &p).flatten();
                }
            }
        }
    }
    if !mem_seen {
        if let Some(path) = v1_path("memory") {
            let dir = cgroup_dir(&fs.join("memory"), &path);
            if let Some(s) = read(&dir.join("memory.limit_in_bytes")) {
                out.memory = parse_v1_memory(&s).flatten();
            }
        }
    }
    out
}

/// The outer container's own limits.
pub fn outer_limits() -> Limits {
    match std::fs::read_to_string("/proc/self/cgroup") {
        Ok(s) => read_limits(Path::new("/"), &s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/cgroup; assuming no outer limits");
            Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn cpus_parse_and_quota() {
        assert_eq!(parse_cpus("2").unwrap(), 2.0);
        assert_eq!(cpu_quota(1.5), (150_000, 100_000));
        assert_eq!(cpu_quota(parse_cpus("0.25").unwrap()), (25_000, 100_000));
        for bad in ["", "x", "0", "-1", "NaN", "inf", "5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn string_parsers() {
        assert_eq!(parse_cpu_max("max 100000\n"), Some(None));
        assert_eq!(parse_cpu_max("150000 100000"), Some(Some(1.5)));
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(parse_memory_max("max\n"), Some(None));
        assert_eq!(parse_memory_max("1073741824\n"), Some(Some(1 << 30)));
        assert_eq!(parse_v1_cpu("-1", "100000"), Some(None));
        assert_eq!(parse_v1_cpu("200000\n", "100000\n"), Some(Some(2.0)));
        assert_eq!(parse_v1_memory("9223372036854771712"), Some(None));
        assert_eq!(parse_v1_memory("536870912"), Some(Some(512 << 20)));
        let (u, v1) = parse_proc_cgroup("12:cpu,cpuacct:/a\n4:memory:/b\n0::/c\n");
        assert_eq!(u.as_deref(), Some("/c"));
        assert!(v1.contains(&("cpuacct".into(), "/a".into())));
        assert!(v1.contains(&("memory".into(), "/b".into())));
    }

    #[test]
    fn v2_tree() {
        let t = tempfile::tempdir().unwrap();
        put(
            t.path(),
            "sys/fs/cgroup/kubepods/pod1/cpu.max",
            "250000 100000\n",
        );
        put(
            t.path(),
            "sys/fs/cgroup/kubepods/pod1/memory.max",
            "2147483648\n",
        );
        let l = read_limits(t.path(), "0::/kubepods/pod1\n");
        assert_eq!(
            l,
            Limits {
                cpus: Some(2.5),
                memory: Some(2 << 30)
            }
        );
        // A namespaced view: the path is not there, the root is ours.
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "sys/fs/cgroup/cpu.max", "max 100000\n");
        put(t.path(), "sys/fs/cgroup/memory.max", "max\n");
        assert_eq!(read_limits(t.path(), "0::/elsewhere\n"), Limits::default());
    }

    #[test]
    fn v1_and_hybrid_tree() {
        let t = tempfile::tempdir().unwrap();
        put(
            t.path(),
            "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us",
            "50000\n",
        );
        put(
            t.path(),
            "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us",
            "100000\n",
        );
        put(
            t.path(),
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "1048576\n",
        );
        // Hybrid: the unified hierarchy exists but has no controllers.
        std::fs::create_dir_all(t.path().join("sys/fs/cgroup/unified")).unwrap();
        let proc = "5:cpu,cpuacct:/docker/x\n4:memory:/docker/x\n0::/docker/x\n";
        let l = read_limits(t.path(), proc);
        assert_eq!(
            l,
            Limits {
                cpus: Some(0.5),
                memory: Some(1 << 20)
            }
        );
        put(
            t.path(),
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(read_limits(t.path(), proc).memory, None);
        assert_eq!(read_limits(t.path(), "").cpus, None);
    }

    #[test]
    fn requested_over_outer() {
        let req = Limits {
            cpus: Some(1.0),
            memory: None,
        };
        let outer = Limits {
            cpus: Some(4.0),
            memory: Some(8),
        };
        assert_eq!(
            req.or(outer),
            Limits {
                cpus: Some(1.0),
                memory: Some(8)
            }
        );
    }
}
