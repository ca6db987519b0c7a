//! Who may call the control API: root, or a member of the admin group
//! (primary or supplementary). The peer's uid and gid come from
//! SO_PEERCRED, taken by the kernel when the peer connected; its
//! supplementary groups from /proc/PID/status, which SO_PEERCRED does not
//! carry.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied(String),
}

/// The decision, from plain values. `groups` is only consulted when the
/// uid and primary gid did not already decide.
pub fn authorize(
    peer: &Peer,
    admin_gid: Option<u32>,
    groups: impl FnOnce() -> Vec<u32>,
) -> Verdict {
    if peer.uid == 0 {
        return Verdict::Allowed;
    }
    let Some(admin) = admin_gid else {
        return Verdict::Denied(format!(
            "uid {} is not root; only root may use the cvmd socket (set CVMD_ADMIN_GROUP to admit a group)",
            peer.uid
        ));
    };
    if peer.gid == admin || groups().contains(&admin) {
        return Verdict::Allowed;
    }
    Verdict::Denied(format!(
        "uid {} is neither root nor in the admin group (gid {admin}); run cvmctl as root or add the user to that group",
        peer.uid
    ))
}

/// The peer's supplementary groups; none when its process is gone or its
/// pid now belongs to a process of another user (pid reuse after the peer
/// exited): then only the uid and primary gid count, which fails closed.
pub fn groups_of(proc_root: &Path, peer: &Peer) -> Vec<u32> {
    let Some(pid) = peer.pid.filter(|p| *p > 0) else {
        return Vec::new();
    };
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")) {
        Ok(s) => match cvmd_oci::proc_status::parse(&s) {
            Some(status) if status.euid == peer.uid => status.groups,
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    }
}

/// The admin group setting: a name from /etc/group or a number.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!(
            "group {name:?} does not exist: create it or give a numeric gid"
        )),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(1),
        }
    }

    #[test]
    fn root_is_always_allowed_and_groups_are_not_read() {
        assert_eq!(
            authorize(&peer(0, 0), None, || panic!("not needed")),
            Verdict::Allowed
        );
    }

    #[test]
    fn without_an_admin_group_only_root() {
        match authorize(&peer(1000, 1000), None, Vec::new) {
            Verdict::Denied(why) => assert!(why.contains("CVMD_ADMIN_GROUP"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn admin_group_as_primary_or_supplementary() {
        assert_eq!(
            authorize(&peer(1000, 50), Some(50), Vec::new),
            Verdict::Allowed
        );
        assert_eq!(
            authorize(&peer(1000, 100), Some(50), || vec![4, 50]),
            Verdict::Allowed
        );
        assert!(matches!(
            authorize(&peer(1000, 100), Some(50), || vec![4, 27]),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn a_vanished_or_replaced_peer_has_no_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = |pid| Peer {
            uid: 1000,
            gid: 1000,
            pid,
        };
        assert!(groups_of(dir.path(), &p(Some(12345))).is_empty());
        assert!(groups_of(dir.path(), &p(None)).is_empty());
        std::fs::create_dir(dir.path().join("7")).unwrap();
        let status = cvmd_oci::proc_status::sample(0, 0, 1000, &[9, 10]);
        std::fs::write(dir.path().join("7/status"), status).unwrap();
        assert_eq!(groups_of(dir.path(), &p(Some(7))), vec![9, 10]);
        // The pid now belongs to another user's process.
        let status = cvmd_oci::proc_status::sample(0, 0, 0, &[9]);
        std::fs::write(dir.path().join("7/status"), status).unwrap();
        assert!(groups_of(dir.path(), &p(Some(7))).is_empty());
        // A garbled status gives no groups either: fail closed.
        std::fs::write(dir.path().join("7/status"), "Uid:\t1000\nGroups:\t9\n").unwrap();
        assert!(groups_of(dir.path(), &p(Some(7))).is_empty());
    }

    #[test]
    fn numeric_groups_need_no_lookup() {
        assert_eq!(resolve_group("4242"), Ok(4242));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-cvmd")
            .unwrap_err()
            .contains("does not exist"));
    }
}
