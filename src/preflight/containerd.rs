//! The `containerd` check: with the containerd image backend, whether the
//! node's containerd answers, is recent enough, which way it will pull, and
//! whether its overlayfs snapshots are visible here (cvmd mounts them
//! itself). Facts are gathered over gRPC; [`judge`] is pure.

use std::path::{Path, PathBuf};

use super::Check;
use crate::backend::containerd::{Containerd, PullPath, Snapshotter};
use crate::backend::{plan, BackendOptions, Choice, Plan};

const NAME: &str = "containerd";

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub choice: Choice,
    pub socket: PathBuf,
    pub socket_present: bool,
    pub pull: PullPath,
    /// containerd's answer, or why there was none.
    pub answer: Result<Answer, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub version: String,
    pub too_old: bool,
    pub transfer: bool,
    pub snapshotter: Snapshotter,
}

pub async fn facts(options: &BackendOptions) -> Facts {
    let socket = options.containerd.socket.clone();
    let socket_present = socket.exists();
    let wanted = plan(options.choice, socket_present) != Plan::Native;
    let answer = if wanted {
        ask(&socket, &options.containerd.namespace).await
    } else {
        Err("not asked".into())
    };
    Facts {
        choice: options.choice,
        socket,
        socket_present,
        pull: options.containerd.route.path,
        answer,
    }
}

async fn ask(socket: &Path, namespace: &str) -> Result<Answer, String> {
    use crate::backend::containerd::ContainerdError;
    let c = match Containerd::connect(socket, namespace).await {
        Ok(c) => c,
        Err(ContainerdError::TooOld { version, .. }) => {
            return Ok(Answer {
                version,
                too_old: true,
                transfer: false,
                snapshotter: Snapshotter::Absent,
            })
        }
        Err(ContainerdError::Unreachable { why, .. }) => return Err(why),
        Err(e) => return Err(e.to_string()),
    };
    let snapshotter = c.snapshotter().await.map_err(|e| e.to_string())?;
    Ok(Answer {
        version: c.version().to_string(),
        too_old: false,
        transfer: c.has_transfer_service(),
        snapshotter,
    })
}

pub fn judge(f: &Facts) -> Check {
    let socket = f.socket.display();
    match plan(f.choice, f.socket_present) {
        Plan::Native if f.choice == Choice::Native => {
            return Check::skip(NAME, "the image backend is native (CVMD_IMAGE_BACKEND)")
        }
        Plan::Native => {
            return Check::skip(
                NAME,
                format!(
                "no containerd socket at {socket}: the auto image backend uses cvmd's own cache"
            ),
            )
        }
        Plan::Containerd { .. } => {}
    }
    let auto = f.choice == Choice::Auto;
    let a = match &f.answer {
        Err(why) if auto => {
            return Check::warn(
                NAME,
                format!("containerd at {socket} does not answer ({why}): the auto image backend falls back to cvmd's own cache"),
                "start containerd, or set CVMD_IMAGE_BACKEND=native to stop asking it",
            )
        }
        Err(why) => {
            return Check::fail(
                NAME,
                format!("containerd at {socket} does not answer ({why})"),
                "start containerd and mount its socket into the outer container (CVMD_CONTAINERD_SOCKET), or set CVMD_IMAGE_BACKEND=native",
            )
        }
        Ok(a) => a,
    };
    if a.too_old {
        let detail = format!(
            "containerd at {socket} is version {}, older than 1.6",
            a.version
        );
        let fix = "upgrade the node's containerd, or set CVMD_IMAGE_BACKEND=native";
        return if auto {
            Check::warn(
                NAME,
                format!("{detail}: the auto image backend uses cvmd's own cache"),
                fix,
            )
        } else {
            Check::fail(NAME, detail, fix)
        };
    }
    if let Some(problem) = a.snapshotter.problem() {
        let detail = format!("containerd {} at {socket}: {problem}", a.version);
        return if auto {
            Check::warn(
                NAME,
                format!("{detail}; the auto image backend uses cvmd's own cache"),
                "to start from the node's containerd instead, fix that",
            )
        } else {
            Check::fail(NAME, detail, "fix that, or set CVMD_IMAGE_BACKEND=native")
        };
    }
    let path = match (f.pull, a.transfer) {
        (PullPath::Content, _) => {
            "cvmd pulls into its content store (CVMD_CONTAINERD_PULL=content)"
        }
        (_, true) => "pulls through its transfer service",
        (PullPath::Transfer, false) => {
            return Check::fail(
                NAME,
                format!(
                    "containerd {} at {socket} has no transfer service and CVMD_CONTAINERD_PULL is transfer",
                    a.version
                ),
                "upgrade containerd to 1.7 or later, or set CVMD_CONTAINERD_PULL=auto",
            )
        }
        (PullPath::Auto, false) => {
            "cvmd pulls into its content store (no transfer service before 1.7)"
        }
    };
    Check::ok(
        NAME,
        format!("containerd {} at {socket}: {path}", a.version),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn answer() -> Answer {
        Answer {
            version: "2.1.9".into(),
            too_old: false,
            transfer: true,
            snapshotter: Snapshotter::Loaded {
                root: Some("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs".into()),
                visible: true,
            },
        }
    }

    fn facts(choice: Choice, present: bool, answer: Result<Answer, String>) -> Facts {
        Facts {
            choice,
            socket: "/run/containerd/containerd.sock".into(),
            socket_present: present,
            pull: PullPath::Auto,
            answer,
        }
    }

    #[test]
    fn native_and_auto_without_a_socket_skip() {
        assert_eq!(
            judge(&facts(Choice::Native, true, Ok(answer()))).status,
            Status::Skip
        );
        let c = judge(&facts(Choice::Auto, false, Err("not asked".into())));
        assert_eq!(c.status, Status::Skip);
        assert!(c.detail.contains("cvmd's own cache"), "{}", c.detail);
    }

    #[test]
    fn silence_fails_when_required_and_warns_under_auto() {
        let down = Err("connection refused".to_string());
        let c = judge(&facts(Choice::Containerd, true, down.clone()));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("does not answer (connection refused)"),
            "{}",
            c.detail
        );
        assert_eq!(judge(&facts(Choice::Auto, true, down)).status, Status::Warn);
    }

    #[test]
    fn an_invisible_snapshot_root_fails_and_auto_falls_back() {
        let mut a = answer();
        a.snapshotter = Snapshotter::Loaded {
            root: Some("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs".into()),
            visible: false,
        };
        let c = judge(&facts(Choice::Containerd, true, Ok(a.clone())));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains(
                "mount the node's /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
            ),
            "{c:?}"
        );
        let c = judge(&facts(Choice::Auto, true, Ok(a)));
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("uses cvmd's own cache"), "{c:?}");
    }

    #[test]
    fn the_pull_path_is_named() {
        let c = judge(&facts(Choice::Containerd, true, Ok(answer())));
        assert_eq!(c.status, Status::Ok);
        assert!(
            c.detail.ends_with("pulls through its transfer service"),
            "{}",
            c.detail
        );
        let mut old = answer();
        old.version = "1.6.20".into();
        old.transfer = false;
        let c = judge(&facts(Choice::Containerd, true, Ok(old.clone())));
        assert!(
            c.detail.contains("no transfer service before 1.7"),
            "{}",
            c.detail
        );
        let mut f = facts(Choice::Containerd, true, Ok(old));
        f.pull = PullPath::Transfer;
        assert_eq!(judge(&f).status, Status::Fail);
    }

    #[test]
    fn too_old_and_broken_snapshotters_fail() {
        let mut a = answer();
        a.too_old = true;
        a.version = "1.5.18".into();
        assert_eq!(
            judge(&facts(Choice::Containerd, true, Ok(a.clone()))).status,
            Status::Fail
        );
        assert_eq!(
            judge(&facts(Choice::Auto, true, Ok(a))).status,
            Status::Warn
        );
        let mut b = answer();
        b.snapshotter = Snapshotter::Failed("overlay not supported".into());
        let c = judge(&facts(Choice::Containerd, true, Ok(b)));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("overlay not supported"), "{}", c.detail);
    }
}
