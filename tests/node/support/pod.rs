//! One pod: a privileged runc container of the outer tree with cvmd as its
//! PID 1, created, wired to the node's bridge and started as a kubelet
//! would, and torn down on drop.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::node::Node;

/// What a pod runs, in the shape of deploy/kubernetes/workspace-pod.yaml.
#[derive(Clone, Debug)]
pub struct PodConfig {
    /// The pod's name: its hostname and `CVMD_WORKSPACE`.
    pub name: String,
    /// cvmd's arguments (`run`, `pull IMAGE`, `gc --budget N`, ...).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The emptyDir at /run/cvmd; a restarted container gets its pod's.
    pub state: Option<PathBuf>,
}

impl PodConfig {
    fn new(name: &str, args: &[&str]) -> PodConfig {
        PodConfig {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            state: None,
        }
    }

    /// `cvmd run` of `image`: the workspace pod.
    pub fn run(name: &str, image: &str) -> PodConfig {
        PodConfig::new(name, &["run"])
            .env("CVMD_IMAGE", image)
            .env("CVMD_STOP_TIMEOUT", "5")
    }

    /// One-shot `cvmd pull IMAGE`.
    pub fn pull(name: &str, image: &str) -> PodConfig {
        PodConfig::new(name, &["pull", image])
    }

    /// One-shot `cvmd gc --budget BUDGET`.
    pub fn gc(name: &str, budget: &str) -> PodConfig {
        PodConfig::new(name, &["gc", "--budget", budget])
    }

    /// One-shot `cvmd prefetch IMAGE...` (the DaemonSet's job).
    pub fn prefetch(name: &str, images: &[&str]) -> PodConfig {
        let mut c = PodConfig::new(name, &["prefetch"]);
        c.args.extend(images.iter().map(|i| i.to_string()));
        c
    }

    /// One-shot `cvmd convert SOURCE TARGET` into eStargz of 64 KiB chunks
    /// (a big file spans many).
    pub fn convert(name: &str, source: &str, target: &str) -> PodConfig {
        PodConfig::new(name, &["convert", source, target, "--chunk-size", "65536"])
    }

    pub fn env(mut self, key: &str, value: &str) -> PodConfig {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// PID 1's environment: the outer image's defaults
    /// (images/outer/Dockerfile) with runc standing in for sysbox-runc, the
    /// pod's name as the workspace's (the downward API's metadata.name),
    /// the registry (and any fault proxy) on the bridge, then the pod's
    /// own settings.
    pub fn container_env(&self, registry_hosts: &str) -> Vec<(String, String)> {
        let defaults = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("CVMD_RUNTIME", "runc"),
            ("CVMD_CACHE_DIR", "/var/lib/cvmd"),
            ("CVMD_STATE_DIR", "/run/cvmd"),
            ("CVMD_LOG_FORMAT", "json"),
            ("CVMD_WORKSPACE", &self.name),
            ("CVMD_INSECURE_REGISTRIES", registry_hosts),
        ];
        defaults
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(self.env.iter().cloned())
            .collect()
    }

    /// The same pod's container again, on the same state dir.
    pub fn restarted(mut self, state: &Path) -> PodConfig {
        self.state = Some(state.to_path_buf());
        self
    }
}

/// How a pod's PID 1 ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

pub struct Pod<'n> {
    pub(super) node: &'n Node,
    pub(super) name: String,
    /// runc's container id, unique per container (restarts get a new one).
    pub(super) id: String,
    /// Bundle: config.json, rootfs (an overlay), its upper and work dirs.
    pub(super) dir: PathBuf,
    pub(super) state: PathBuf,
    pub(super) log: PathBuf,
    pub(super) pid: Pid,
    pub(super) exit: Option<Exit>,
    pub(super) started: Instant,
}

impl Pod<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// PID 1's pid on the node.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Everything PID 1 wrote (stdout and stderr, as `kubectl logs`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What PID 1 left in /dev/termination-log (Kubernetes shows it as the
    /// container's termination message).
    pub fn termination_message(&self) -> String {
        std::fs::read_to_string(self.dir.join("termination-log")).unwrap_or_default()
    }

    /// `runc exec` in the pod (as `kubectl exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        self.node
            .runc()
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("runc exec")
    }

    /// `runc exec` in the pod, not waited for (a read left in flight).
    pub fn exec_spawn(&self, args: &[&str]) -> std::process::Child {
        self.node
            .runc()
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runc exec")
    }

    /// Waits until the workspace runs: cvmd logs it, and then `cvmctl
    /// status --ready` (the real pod's readiness probe) agrees. The time
    /// from the pod's creation to the log line, or why not: the pod ended,
    /// or `timeout` passed. (The log is polled rather than the probe: a
    /// `runc exec` every few ms would load the node it measures.)
    pub fn wait_running(&mut self, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        let mut logged: Option<Duration> = None;
        loop {
            if let Some(exit) = self.try_exit() {
                return Err(format!("pod {} ended ({exit:?}) before running", self.id));
            }
            if logged.is_none() && self.log().contains("\"message\":\"workspace running\"") {
                logged = Some(self.started.elapsed());
            }
            if let Some(at) = logged {
                if self.exec(&["cvmctl", "status", "--ready"]).status.success() {
                    return Ok(at);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("pod {} not running after {timeout:?}", self.id));
            }
            std::thread::sleep(Duration::from_millis(if logged.is_some() {
                100
            } else {
                20
            }));
        }
    }

    /// Sends `sig` to PID 1 (from the node, as the kubelet does).
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() {
            let _ = kill(self.pid, sig);
        }
    }

    /// PID 1's exit, once it has ended (reaped here: the node is the
    /// pods' subreaper).
    pub fn try_exit(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            self.exit = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Some(Exit::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => Some(Exit::Signal(sig)),
                _ => None,
            };
        }
        self.exit
    }

    /// Waits up to `timeout` for PID 1 to end.
    pub fn wait(&mut self, timeout: Duration) -> Option<Exit> {
        crate::common::wait_until(timeout, || self.try_exit().is_some());
        self.exit
    }

    /// SIGTERM, then up to `grace` for cvmd to stop the workspace and exit
    /// (terminationGracePeriodSeconds), then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Exit {
        self.signal(Signal::SIGTERM);
        if let Some(exit) = self.wait(grace) {
            return exit;
        }
        self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("pod {} survived SIGKILL", self.id))
    }

    /// SIGKILL, as a node that loses the pod (OOM, eviction, power).
    pub fn kill(&mut self) -> Exit {
        self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("pod {} survived SIGKILL", self.id))
    }

    /// Runs to its end (a one-shot pod) within `timeout`, else is killed.
    pub fn finish(&mut self, timeout: Duration) -> Exit {
        match self.wait(timeout) {
            Some(exit) => exit,
            None => {
                let exit = self.kill();
                eprintln!("pod {} killed after {timeout:?}:\n{}", self.id, self.log());
                exit
            }
        }
    }

    /// Peak resident memory of PID 1 so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::common::proc_status_kib(self.pid.as_raw().cast_unsigned(), "VmHWM")
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            self.signal(Signal::SIGKILL);
            self.wait(Duration::from_secs(30));
        }
        self.node.remove_container(&self.id, &self.dir);
    }
}
