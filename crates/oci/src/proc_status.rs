//! `/proc/PID/status`, parsed by procfs-core: the one reader of the
//! capability masks, ids and supplementary groups cvmd takes from it (the
//! outer container's privileges, the bounding set the workspace may have,
//! a control API peer's groups).

use std::path::PathBuf;

use procfs_core::process::Status;
use procfs_core::{FromBufRead, FromRead};

/// What was read, for those who need more than the helpers below.
pub use procfs_core::process::Status as ProcStatus;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a process status the kernel writes: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// A status text as the kernel writes it; `None` when it is not one (a
/// field missing or malformed).
pub fn parse(text: &str) -> Option<Status> {
    Status::from_buf_read(text.as_bytes()).ok()
}

/// `/proc/<pid>/status`; `pid` is a number or `self`.
pub fn read(pid: &str) -> Result<Status, StatusError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path).map_err(|source| StatusError::Read {
        path: path.clone(),
        source,
    })?;
    Status::from_buf_read(text.as_bytes()).map_err(|e| StatusError::Parse {
        path,
        reason: e.to_string(),
    })
}

/// The parent of `pid` (`/proc/<pid>/stat`'s ppid, which procfs-core reads
/// past a command name that holds spaces or parentheses).
pub fn parent_of(pid: i32) -> Option<i32> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    procfs_core::process::Stat::from_read(text.as_slice())
        .ok()
        .map(|s| s.ppid)
}

/// A status text shaped as the kernel writes it, with these masks, ids and
/// groups: the fixture for tests of code that reads one (here and, through
/// the `test-support` feature, in the crates above).
#[cfg(any(test, feature = "test-support"))]
pub fn sample(effective: u64, bounding: u64, uid: u32, groups: &[u32]) -> String {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    format!(
        "Name:\tsample\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nNgid:\t0\nPid:\t42\n\
         PPid:\t1\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n\
         FDSize:\t64\nGroups:\t{} \nNStgid:\t42\nNSpid:\t42\nNSpgid:\t42\nNSsid:\t42\n\
         Threads:\t1\nSigQ:\t0/63704\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
         SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n\
         CapInh:\t0000000000000000\nCapPrm:\t{effective:016x}\nCapEff:\t{effective:016x}\n\
         CapBnd:\t{bounding:016x}\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n\
         Cpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\nMems_allowed_list:\t0\n\
         voluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t0\n",
        groups.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = read("self").unwrap();
        assert_eq!(me.pid, std::process::id().cast_signed());
        assert!(me.capbnd.is_some());
        assert_eq!(parent_of(std::process::id().cast_signed()), Some(me.ppid));
    }

    #[test]
    fn the_sample_parses_as_the_kernels_text_does() {
        let s = parse(&sample(0x1f, 0x1fffeffffff, 1000, &[4, 27])).unwrap();
        assert_eq!((s.capeff, s.capbnd), (0x1f, Some(0x1fffeffffff)));
        assert_eq!((s.euid, s.groups.as_slice()), (1000, &[4, 27][..]));
        assert!(parse(&sample(0, 0, 0, &[])).unwrap().groups.is_empty());
    }

    #[test]
    fn a_partial_or_garbled_text_is_refused() {
        assert!(parse("CapEff:\t000001ffffffffff\n").is_none());
        assert!(parse("garbage").is_none());
        let bad = sample(0, 0, 0, &[]).replace("CapEff:\t0000000000000000", "CapEff:\tzz");
        assert!(parse(&bad).is_none());
    }
}
