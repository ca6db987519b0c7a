//! The Sysbox daemons, when the runtime is sysbox-runc: `sysbox-mgr` then
//! `sysbox-fs` (that order: fs registers with mgr), started as children of
//! cvmd through the one reaper, in cvmd's mount namespace (where
//! sysbox-runc runs: docs/ARCHITECTURE.md, the sysbox-runc contract). cvmd waits for
//! each one's socket; one that already answers (a node-level install) is
//! left alone. Either daemon exiting breaks running containers, so it is
//! fatal: [`Daemons::died`] reports which, why it probably happened and its
//! last output lines.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::rootfs::version::Version;
use crate::supervisor::reaper::{Exit, Reaper, ReaperError};

/// Tools sysbox-mgr runs (rsync for its shiftfs-less rootfs copies,
/// modprobe for kernel modules, iptables for Docker-in-workspace).
pub const REQUIRED_TOOLS: &[&str] = &["rsync", "modprobe", "iptables"];
/// Output lines of a daemon kept for the message when it dies.
const TAIL_LINES: usize = 10;
/// How long a daemon has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    /// Name on PATH or path of sysbox-mgr.
    pub mgr: String,
    pub fs: String,
    /// Where the sockets appear (`/run/sysbox`).
    pub run_dir: PathBuf,
    /// How long each socket may take to appear.
    pub timeout: Duration,
}

impl Config {
    /// The daemons in start order: (name, binary, socket).
    fn daemons(&self) -> [(&'static str, &str, PathBuf); 2] {
        [
            ("sysbox-mgr", &self.mgr, self.run_dir.join("sysmgr.sock")),
            ("sysbox-fs", &self.fs, self.run_dir.join("sysfs.sock")),
        ]
    }

    /// The pid file each daemon keeps beside its socket (Sysbox's own
    /// names); a daemon refuses to start while its file names a live pid.
    fn pid_file(&self, name: &str) -> PathBuf {
        self.run_dir.join(match name {
            "sysbox-mgr" => "sysmgr.pid",
            _ => "sysfs.pid",
        })
    }
}

/// Removes what a daemon that is gone left in the run dir: its pid file and
/// socket. Called only when nothing answers on the socket, so no live
/// daemon serves this run dir. A cvmd killed with its daemons leaves both
/// behind, and in a new PID namespace the old pid (e.g. 34) may well name
/// some other live process: sysbox-mgr then refuses to start ("program is
/// running as pid 34").
fn clear_leftovers(name: &str, pid_file: &Path, socket: &Path) {
    for path in [pid_file, socket] {
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(daemon = name, path = %path.display(), "removed what a daemon that is gone left behind")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(daemon = name, path = %path.display(), error = %e, "cannot remove a stale sysbox file")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SysboxError {
    #[error(
        "sysbox-mgr needs {} on PATH, which lacks {}: install them in the outer image",
        REQUIRED_TOOLS.join(", "), missing.join(", ")
    )]
    MissingTools { missing: Vec<String> },
    #[error("{name} ({binary:?}) not found: install Sysbox in the outer image, set CVMD_SYSBOX_MGR/CVMD_SYSBOX_FS, or use CVMD_RUNTIME=runc where Sysbox is absent")]
    NotFound { name: &'static str, binary: String },
    #[error("cannot start {name}: {source}; check that the binary is executable (CVMD_SYSBOX_MGR, CVMD_SYSBOX_FS)")]
    Spawn {
        name: &'static str,
        #[source]
        source: ReaperError,
    },
    #[error("{name} did not create its socket {socket:?} within {after:?}; it was stopped. Its last output: {tail}")]
    NoSocket {
        name: &'static str,
        socket: PathBuf,
        after: Duration,
        tail: String,
    },
    #[error("{name} exited ({exit}); likely cause: {cause}. Its last output: {tail}")]
    Died {
        name: &'static str,
        exit: String,
        cause: String,
        tail: String,
    },
}

/// Facts about this host that explain a daemon's death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// CAP_SYS_ADMIN in cvmd's effective set: a privileged outer container.
    pub privileged: bool,
    /// The kernel release's major and minor.
    pub kernel: (u32, u32),
    pub release: String,
    /// The file system under sysbox's data root when it is one Sysbox
    /// cannot use (overlayfs, tmpfs, NFS).
    pub bad_data_root: Option<&'static str>,
}

/// Sysbox's data root (sysbox-mgr's default).
pub const DATA_ROOT: &str = "/var/lib/sysbox";

/// The name of a file system type Sysbox's data root cannot be on.
pub fn unusable_fs(magic: i64) -> Option<&'static str> {
    match magic {
        0x794c_7630 => Some("overlayfs"),
        0x0102_1994 => Some("tmpfs"),
        0x6969 => Some("NFS"),
        _ => None,
    }
}

/// The file system type of `path` or, while it does not exist yet, of its
/// nearest existing parent (where sysbox-mgr would create it).
fn fs_magic_of(path: &Path) -> Option<i64> {
    path.ancestors()
        .find_map(|p| crate::rootfs::fs_magic(p).ok())
}

impl HostFacts {
    pub fn read() -> HostFacts {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        HostFacts {
            privileged: cap_sys_admin(&status),
            // An unreadable release counts as too old to blame anything else.
            kernel: Version::parse(&release).map_or((0, 0), |v| (v.0, v.1)),
            release,
            bad_data_root: fs_magic_of(Path::new(DATA_ROOT)).and_then(unusable_fs),
        }
    }
}

/// Whether a /proc/self/status text's effective set holds CAP_SYS_ADMIN.
pub fn cap_sys_admin(status: &str) -> bool {
    let bit = caps::Capability::CAP_SYS_ADMIN.index();
    cvmd_oci::proc_status::parse(status).is_some_and(|s| s.capeff & (1 << bit) != 0)
}

/// The most likely reason a daemon died, from what is known of the host
/// (Sysbox's requirements: privileged, kernel >= 5.5, its tools, a data
/// root that is not overlayfs/tmpfs/NFS).
pub fn likely_cause(facts: &HostFacts) -> String {
    if !facts.privileged {
        return "cvmd is not privileged (CAP_SYS_ADMIN missing): run the outer container with privileged: true".into();
    }
    if facts.kernel < (5, 5) {
        return format!(
            "the kernel {} is older than 5.5, the oldest Sysbox runs on",
            facts.release
        );
    }
    if let Some(fs) = facts.bad_data_root {
        return format!(
            "{DATA_ROOT} is on {fs}, which Sysbox cannot use: mount a volume there (ext4 or btrfs)"
        );
    }
    "see its output; Sysbox needs a privileged outer container, kernel 5.5 or newer, \
     rsync, modprobe and iptables on PATH, and /var/lib/sysbox on ext4 or btrfs \
     (not overlayfs, tmpfs or NFS)"
        .into()
}

/// Which of `tools` `find` cannot locate.
pub fn missing_tools(tools: &[&str], find: &dyn Fn(&str) -> Option<PathBuf>) -> Vec<String> {
    tools
        .iter()
        .filter(|t| find(t).is_none())
        .map(|t| t.to_string())
        .collect()
}

/// A name on PATH, or a path.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether something accepts connections on `socket`.
fn answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

type Tail = Arc<Mutex<VecDeque<String>>>;

fn tail_text(tail: &Tail) -> String {
    let lines = tail.lock().unwrap_or_else(|e| e.into_inner());
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

#[derive(Debug)]
struct Started {
    name: &'static str,
    pid: i32,
    exited: Arc<AtomicBool>,
}

/// The daemons cvmd started (none when they already ran).
#[derive(Debug)]
pub struct Daemons {
    started: Vec<Started>,
    deaths: mpsc::UnboundedReceiver<SysboxError>,
    tx: mpsc::UnboundedSender<SysboxError>,
}

impl Daemons {
    /// Nothing started: for runtimes other than sysbox-runc.
    pub fn none() -> Daemons {
        let (tx, deaths) = mpsc::unbounded_channel();
        Daemons {
            started: Vec::new(),
            deaths,
            tx,
        }
    }

    /// Resolves when a started daemon exits, with why; never without one.
    pub async fn died(&mut self) -> SysboxError {
        match self.deaths.recv().await {
            Some(e) => e,
            None => std::future::pending().await,
        }
    }

    /// A death already reported, without waiting.
    pub fn check(&mut self) -> Result<(), SysboxError> {
        match self.deaths.try_recv() {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    }

    /// SIGTERM to each started daemon, last started first, SIGKILL after
    /// [`STOP_GRACE`].
    pub async fn stop(mut self) {
        for d in self.started.drain(..).rev() {
            if d.exited.load(Ordering::SeqCst) {
                continue;
            }
            tracing::info!(daemon = d.name, pid = d.pid, "stopping");
            signal(d.pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while !d.exited.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !d.exited.load(Ordering::SeqCst) {
                signal(d.pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Daemons {
    /// A path that did not call [`Daemons::stop`] (an error) must not
    /// leave daemons behind when cvmd is not PID 1.
    fn drop(&mut self) {
        for d in &self.started {
            if !d.exited.load(Ordering::SeqCst) {
                signal(d.pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Starts whichever daemon does not answer yet, in order, each once its
/// predecessor's socket answers.
pub async fn start(reaper: &Reaper, config: &Config) -> Result<Daemons, SysboxError> {
    let mut daemons = Daemons::none();
    let mut checked_tools = false;
    for (name, binary, socket) in config.daemons() {
        if answers(&socket) {
            tracing::info!(daemon = name, socket = %socket.display(), "already running");
            continue;
        }
        if !checked_tools {
            let missing = missing_tools(REQUIRED_TOOLS, &which);
            if !missing.is_empty() {
                return Err(SysboxError::MissingTools { missing });
            }
            checked_tools = true;
        }
        let path = which(binary).ok_or_else(|| SysboxError::NotFound {
            name,
            binary: binary.to_string(),
        })?;
        clear_leftovers(name, &config.pid_file(name), &socket);
        let started = spawn_one(reaper, name, &path, &socket, config.timeout, &daemons.tx).await?;
        daemons.started.push(started);
    }
    Ok(daemons)
}

async fn spawn_one(
    reaper: &Reaper,
    name: &'static str,
    path: &Path,
    socket: &Path,
    timeout: Duration,
    deaths: &mpsc::UnboundedSender<SysboxError>,
) -> Result<Started, SysboxError> {
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = reaper
        .spawn(cmd)
        .map_err(|source| SysboxError::Spawn { name, source })?;
    let pid = spawned.pid;
    tracing::info!(daemon = name, pid, path = %path.display(), "started");
    let tail: Tail = Arc::default();
    let mut readers = Vec::new();
    for fd in [
        spawned.stdout.map(std::os::fd::OwnedFd::from),
        spawned.stderr.map(std::os::fd::OwnedFd::from),
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            readers.push(tokio::spawn(log_lines(name, rx, tail.clone())));
        }
    }
    let exited = Arc::new(AtomicBool::new(false));
    let (exit_tx, mut exit_rx) = tokio::sync::watch::channel(None::<Exit>);
    {
        let exited = exited.clone();
        let tail = tail.clone();
        let deaths = deaths.clone();
        let exit = spawned.exit;
        tokio::spawn(async move {
            let exit = exit.await;
            exited.store(true, Ordering::SeqCst);
            // Its last words reach the tail before the message is made.
            for r in readers {
                let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
            }
            let shown = match &exit {
                Ok(e) => e.to_string(),
                Err(e) => e.to_string(),
            };
            let _ = exit_tx.send(Some(exit.unwrap_or(Exit::code(255))));
            tracing::error!(daemon = name, exit = %shown, "exited");
            let _ = deaths.send(SysboxError::Died {
                name,
                exit: shown,
                cause: likely_cause(&HostFacts::read()),
                tail: tail_text(&tail),
            });
        });
    }
    let deadline = Instant::now() + timeout;
    loop {
        if answers(socket) {
            tracing::info!(daemon = name, socket = %socket.display(), "answers");
            return Ok(Started { name, pid, exited });
        }
        let seen = *exit_rx.borrow_and_update();
        if let Some(exit) = seen {
            return Err(SysboxError::Died {
                name,
                exit: exit.to_string(),
                cause: likely_cause(&HostFacts::read()),
                tail: tail_text(&tail),
            });
        }
        if Instant::now() >= deadline {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(SysboxError::NoSocket {
                name,
                socket: socket.to_path_buf(),
                after: timeout,
                tail: tail_text(&tail),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_lines(name: &'static str, pipe: tokio::net::unix::pipe::Receiver, tail: Tail) {
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "sysbox", daemon = name, "{line}");
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_from_capeff() {
        use cvmd_oci::proc_status::sample;
        assert!(cap_sys_admin(&sample(0x1ffffffffff, 0x1ffffffffff, 0, &[])));
        assert!(!cap_sys_admin(&sample(0xa80425fb, 0xa80425fb, 0, &[])));
        assert!(!cap_sys_admin("no caps here"));
    }

    #[test]
    fn data_root_file_systems() {
        assert_eq!(unusable_fs(0x794c7630), Some("overlayfs"));
        assert_eq!(unusable_fs(0x01021994), Some("tmpfs"));
        assert_eq!(unusable_fs(0xEF53), None); // ext4
        assert!(fs_magic_of(Path::new("/nonexistent/below/root")).is_some());
    }

    #[test]
    fn causes_in_order_of_likelihood() {
        let facts = HostFacts {
            privileged: false,
            kernel: (4, 19),
            release: "4.19.0".into(),
            bad_data_root: Some("overlayfs"),
        };
        assert!(likely_cause(&facts).contains("not privileged"));
        let old = HostFacts {
            privileged: true,
            ..facts.clone()
        };
        assert!(likely_cause(&old).contains("4.19.0 is older than 5.5"));
        let overlay = HostFacts {
            kernel: (6, 1),
            ..old
        };
        assert!(likely_cause(&overlay).contains("/var/lib/sysbox is on overlayfs"));
        let fine = HostFacts {
            bad_data_root: None,
            ..overlay
        };
        let c = likely_cause(&fine);
        assert!(c.contains("rsync, modprobe and iptables"), "{c}");
    }

    #[test]
    fn missing_tools_are_named() {
        let have = |t: &str| (t == "iptables").then(|| PathBuf::from("/usr/sbin/iptables"));
        assert_eq!(
            missing_tools(REQUIRED_TOOLS, &have),
            ["rsync".to_string(), "modprobe".to_string()]
        );
        let e = SysboxError::MissingTools {
            missing: vec!["rsync".into()],
        };
        assert!(e.to_string().contains("lacks rsync"), "{e}");
    }
}
