//! Overlay sequencing and fallbacks against a recording [`MountOps`]; no
//! root needed.

use std::cell::RefCell;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::overlay::{self, Api};
use super::sys::{Lower, MountOps, StepError};

/// Records calls; refuses `lowerdir+` fds and/or paths with EINVAL as an
/// older kernel would.
#[derive(Default)]
struct Recorder {
    refuse_fds: bool,
    refuse_paths: bool,
    calls: RefCell<Vec<String>>,
}

impl MountOps for Recorder {
    fn overlay_fsconfig(
        &self,
        lowers: &[Lower<'_>],
        _u: &Path,
        _w: &Path,
        _t: &Path,
    ) -> Result<(), StepError> {
        let fds = lowers.iter().any(|l| matches!(l, Lower::Fd(_)));
        let names: Vec<String> = lowers
            .iter()
            .map(|l| match l {
                Lower::Path(p) => p.display().to_string(),
                Lower::Fd(_) => "fd".into(),
            })
            .collect();
        self.calls
            .borrow_mut()
            .push(format!("fsconfig {}", names.join(" ")));
        if (fds && self.refuse_fds) || (!fds && self.refuse_paths) {
            return Err(StepError {
                step: "lowerdir+",
                error: io::Error::from_raw_os_error(libc::EINVAL),
                log: String::new(),
            });
        }
        Ok(())
    }
    fn overlay_classic(&self, cwd: &Path, data: &str, _t: &Path) -> io::Result<()> {
        self.calls
            .borrow_mut()
            .push(format!("classic {} {data}", cwd.display()));
        Ok(())
    }
    fn idmapped_tree(&self, path: &Path, _ns: BorrowedFd<'_>) -> Result<OwnedFd, StepError> {
        self.calls
            .borrow_mut()
            .push(format!("idmap {}", path.display()));
        Ok(std::fs::File::open("/dev/null").unwrap().into())
    }
    fn attach(&self, _tree: BorrowedFd<'_>, at: &Path) -> io::Result<()> {
        self.calls.borrow_mut().push(format!(
            "attach {}",
            at.file_name().unwrap().to_string_lossy()
        ));
        Ok(())
    }
    fn bind(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.calls
            .borrow_mut()
            .push(format!("bind {} {}", from.display(), to.display()));
        Ok(())
    }
    fn unmount(&self, path: &Path, detach: bool) -> io::Result<()> {
        self.calls.borrow_mut().push(format!(
            "umount {} {detach}",
            path.file_name().unwrap().to_string_lossy()
        ));
        Ok(())
    }
}

fn layers() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/c/a"),
        PathBuf::from("/c/b"),
        PathBuf::from("/c/c"),
    ]
}

#[test]
fn new_api_gets_layers_top_first() {
    let ws = tempfile::tempdir().unwrap();
    let r = Recorder::default();
    let api = overlay::mount(&r, &layers(), ws.path(), Path::new("/t"), None).unwrap();
    assert_eq!(api, Api::FsconfigPaths);
    assert_eq!(*r.calls.borrow(), vec!["fsconfig /c/c /c/b /c/a"]);
}

#[test]
fn refused_lowerdir_plus_falls_back_to_short_links() {
    let ws = tempfile::tempdir().unwrap();
    let r = Recorder {
        refuse_paths: true,
        ..Default::default()
    };
    let api = overlay::mount(&r, &layers(), ws.path(), Path::new("/t"), None).unwrap();
    assert_eq!(api, Api::Classic);
    let calls = r.calls.borrow();
    assert!(calls[1].ends_with("lowerdir=l/2:l/1:l/0,upperdir=upper,workdir=work,index=off,redirect_dir=off,metacopy=off,xino=off"), "{calls:?}");
    assert_eq!(
        std::fs::read_link(ws.path().join("l/0")).unwrap(),
        PathBuf::from("/c/a")
    );
    assert_eq!(
        std::fs::read_link(ws.path().join("l/2")).unwrap(),
        PathBuf::from("/c/c")
    );
}

#[test]
fn idmapped_layers_go_by_fd_then_by_helper_path_then_classic() {
    let ws = tempfile::tempdir().unwrap();
    let ns: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let ns = std::os::fd::AsFd::as_fd(&ns);

    let r = Recorder::default();
    assert_eq!(
        overlay::mount(&r, &layers(), ws.path(), Path::new("/t"), Some(ns)).unwrap(),
        Api::FsconfigFds
    );
    assert_eq!(r.calls.borrow().last().unwrap(), "fsconfig fd fd fd");

    let r = Recorder {
        refuse_fds: true,
        ..Default::default()
    };
    assert_eq!(
        overlay::mount(&r, &layers(), ws.path(), Path::new("/t"), Some(ns)).unwrap(),
        Api::FsconfigPaths
    );
    let calls = r.calls.borrow().clone();
    let helper = |n: &str| ws.path().join("idmapped").join(n).display().to_string();
    assert_eq!(calls[4..7], ["attach 2", "attach 1", "attach 0"]);
    assert_eq!(
        calls[7],
        format!("fsconfig {} {} {}", helper("2"), helper("1"), helper("0"))
    );
    // Helpers are detached right after the overlay is up.
    assert_eq!(
        calls[8..],
        ["umount 2 true", "umount 1 true", "umount 0 true"]
    );

    let r = Recorder {
        refuse_fds: true,
        refuse_paths: true,
        ..Default::default()
    };
    assert_eq!(
        overlay::mount(&r, &layers(), ws.path(), Path::new("/t"), Some(ns)).unwrap(),
        Api::Classic
    );
    let calls = r.calls.borrow();
    assert!(
        calls
            .iter()
            .any(|c| c.contains("lowerdir=idmapped/2:idmapped/1:idmapped/0,")),
        "{calls:?}"
    );
    assert!(calls.last().unwrap().starts_with("umount"));
}
