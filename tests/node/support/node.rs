//! The node: a network namespace with a bridge, the registry in a
//! namespace of its own on that bridge, the shared cache dir (the
//! hostPath), runc's state for the pods, and the pods' cgroup parent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::Pid;

use super::netns::{self, Netns};
use super::pod::{Pod, PodConfig};
use super::spec::{self, Bind, PodSpec};
use crate::common::image::Image;
use crate::common::proxy::FaultProxy;
use crate::common::registry::{in_netns, RegistryOptions};
use crate::common::Registry;

const REGISTRY_ADDR: &str = "10.88.0.2";
const REGISTRY_PORT: u16 = 5000;

pub struct Node {
    /// Short and unique per node: names runc containers and cgroups.
    id: String,
    outer: PathBuf,
    registry: Mutex<Registry>,
    registry_ns: Netns,
    /// Fault proxies on the bridge ([`Node::fault_proxy`]): pods reach
    /// them over plain HTTP too.
    proxies: Mutex<Vec<String>>,
    net: Netns,
    seq: AtomicU32,
    // Last: removed after everything in it is gone.
    dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        // Pods are created by `runc create`, which exits and leaves their
        // PID 1 an orphan; as subreaper this process gets it, so it can
        // read each pod's exit status as the kubelet does.
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
        let outer = super::outer::tree().expect("the outer tree (check can_run first)");
        let dir = tempfile::Builder::new()
            .prefix("cvmd-node-")
            .tempdir()
            .expect("node dir");
        for d in ["cache", "pods", "state", "runc"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let id = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("cvmd-node-")
            .to_lowercase();
        let net = Netns::new();
        netns::make_bridge(&net);
        let registry_ns = Netns::new();
        netns::attach(&net, "vreg", registry_ns.pid(), REGISTRY_ADDR);
        let registry = Registry::start(RegistryOptions {
            listen: Some(SocketAddr::new(
                REGISTRY_ADDR.parse().unwrap(),
                REGISTRY_PORT,
            )),
            netns: Some(registry_ns.path()),
            ..Default::default()
        })
        .expect("start the registry");
        Node {
            id: format!("n{id}"),
            outer,
            registry: Mutex::new(registry),
            registry_ns,
            proxies: Mutex::new(Vec::new()),
            net,
            seq: AtomicU32::new(0),
            dir,
        }
    }

    /// The shared cache (the hostPath at /var/lib/cvmd in every pod).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The state dir (emptyDir) of pod `name`, made on first use.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("state").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Empties the shared cache (between rounds; no pod may be running).
    pub fn clear_cache(&self) {
        let cache = self.cache_dir();
        std::fs::remove_dir_all(&cache).unwrap();
        std::fs::create_dir(&cache).unwrap();
    }

    /// `ADDR:PORT` of the registry on the bridge.
    pub fn registry_host(&self) -> String {
        format!("{REGISTRY_ADDR}:{REGISTRY_PORT}")
    }

    /// A fault proxy in the registry's namespace, on the bridge beside the
    /// registry: a pod that pulls `reference` with
    /// [`proxied`](Node::proxied) goes through it (throttled links, request
    /// counts).
    pub fn fault_proxy(&self) -> FaultProxy {
        let upstream = format!("http://{}", self.registry_host());
        let listen = SocketAddr::new(REGISTRY_ADDR.parse().unwrap(), 0);
        let proxy = in_netns(Some(&self.registry_ns.path()), || {
            FaultProxy::start_on(&upstream, listen)
        });
        self.proxies.lock().unwrap().push(proxy.host());
        proxy
    }

    /// `reference` of this node's registry as reached through `proxy`.
    pub fn proxied(&self, proxy: &FaultProxy, reference: &str) -> String {
        reference.replacen(&self.registry_host(), &proxy.host(), 1)
    }

    /// What pods reach over plain HTTP: the registry and the proxies.
    fn insecure_hosts(&self) -> String {
        let mut hosts = vec![self.registry_host()];
        hosts.extend(self.proxies.lock().unwrap().iter().cloned());
        hosts.join(",")
    }

    /// The OCI manifest of `repo:tag` in the registry.
    pub fn manifest(&self, repo: &str, tag: &str) -> serde_json::Value {
        let client = self.registry.lock().unwrap().client();
        let (_, _, bytes) = in_netns(Some(&self.registry_ns.path()), || {
            crate::common::block_on(client.get_manifest(
                repo,
                tag,
                Some("application/vnd.oci.image.manifest.v1+json"),
            ))
        })
        .unwrap_or_else(|e| panic!("manifest of {repo}:{tag}: {e}"));
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Pushes `image` as `repo:tag` (from inside the registry's namespace);
    /// the reference the pods pull.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) -> String {
        let client = self.registry.lock().unwrap().client();
        in_netns(Some(&self.registry_ns.path()), || {
            crate::common::block_on(client.push_image(repo, tag, image))
        })
        .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e}"));
        format!("{}/{repo}:{tag}", self.registry_host())
    }

    /// A registry outage: killed (its storage stays).
    pub fn stop_registry(&self) {
        self.registry.lock().unwrap().stop();
    }

    pub fn start_registry(&self) {
        self.registry
            .lock()
            .unwrap()
            .start_again()
            .expect("restart the registry");
    }

    /// Runs `script` in the node's network namespace (its bridge, veths
    /// and iptables); its stdout.
    pub fn sh(&self, script: &str) -> String {
        self.net.sh(script)
    }

    /// `runc` with the pods' state root.
    pub fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.dir.path().join("runc"));
        c
    }

    /// The pods' cgroup parent, relative to this process's cgroup.
    fn cgroup_parent(&self) -> String {
        format!("cvmd-{}", self.id)
    }

    /// Creates, wires and starts a pod as the kubelet would: the container
    /// (`runc create`), then its network (a veth to the bridge), then
    /// PID 1 (`runc start`).
    pub fn start(&self, cfg: PodConfig) -> Pod<'_> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{}-{seq}", self.id, cfg.name);
        let dir = self.dir.path().join("pods").join(&id);
        let rootfs = dir.join("rootfs");
        for d in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let state = cfg
            .state
            .clone()
            .unwrap_or_else(|| self.state_dir(&cfg.name));
        // Each pod writes to its own upper dir over the shared read-only
        // tree, as a container runtime's snapshotter gives it.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.outer.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap_or_else(|e| panic!("overlay rootfs of pod {id}: {e}"));

        let termination_log = dir.join("termination-log");
        std::fs::write(&termination_log, "").unwrap();
        let env = cfg.container_env(&self.insecure_hosts());
        let mut args = vec!["/usr/local/bin/cvmd".to_string()];
        args.extend(cfg.args.iter().cloned());
        let bin = |name: &str| match name {
            "cvmd" => crate::common::cvmd_bin(),
            _ => crate::common::cvmctl_bin(),
        };
        let spec = PodSpec {
            hostname: cfg.name.clone(),
            args,
            env,
            rootfs: rootfs.clone(),
            binds: vec![
                Bind {
                    source: self.cache_dir(),
                    destination: "/var/lib/cvmd",
                    read_only: false,
                },
                Bind {
                    source: state.clone(),
                    destination: "/run/cvmd",
                    read_only: false,
                },
                // The kubelet's file for a container's last words.
                Bind {
                    source: termination_log.clone(),
                    destination: "/dev/termination-log",
                    read_only: false,
                },
                Bind {
                    source: bin("cvmd"),
                    destination: "/usr/local/bin/cvmd",
                    read_only: true,
                },
                Bind {
                    source: bin("cvmctl"),
                    destination: "/usr/local/bin/cvmctl",
                    read_only: true,
                },
            ],
            cgroups_path: format!("{}/{id}", self.cgroup_parent()),
            capabilities: spec::capabilities_in(spec::own_bounding_set()),
        };
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec::config(&spec)).unwrap(),
        )
        .unwrap();

        let log = dir.join("log");
        let out = std::fs::File::create(&log).unwrap();
        let started = Instant::now();
        // PID 1's stdout and stderr are the files runc create is given.
        let created = self
            .runc()
            .arg("create")
            .arg("--bundle")
            .arg(&dir)
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .expect("runc create");
        if !created.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            self.remove_container(&id, &dir);
            panic!("runc create {id} failed ({created}):\n{text}");
        }
        let pid: i32 = std::fs::read_to_string(dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let addr = format!("10.88.{}.{}", 1 + seq / 250, 1 + seq % 250);
        netns::attach(&self.net, &format!("vp{seq}"), pid.cast_unsigned(), &addr);
        let pod = Pod {
            node: self,
            name: cfg.name,
            id,
            dir,
            state,
            log,
            pid: Pid::from_raw(pid),
            exit: None,
            started,
        };
        let out = self.runc().arg("start").arg(&pod.id).output().unwrap();
        assert!(
            out.status.success(),
            "runc start {}: {}",
            pod.id,
            String::from_utf8_lossy(&out.stderr)
        );
        pod
    }

    /// Starts a one-shot pod and waits for its end; its exit and log.
    pub fn run_once(
        &self,
        cfg: PodConfig,
        timeout: std::time::Duration,
    ) -> (super::pod::Exit, String) {
        let mut pod = self.start(cfg);
        let exit = pod.finish(timeout);
        (exit, pod.log())
    }

    /// After PID 1 is gone: runc's state and cgroup, the rootfs mount and
    /// the bundle (the state dir stays, as an emptyDir outlives its
    /// container).
    pub(super) fn remove_container(&self, id: &str, dir: &Path) {
        let _ = self
            .runc()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let rootfs = dir.join("rootfs");
        if let Err(e) = umount2(&rootfs, MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                panic!("unmount {}: {e}", rootfs.display());
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Mount points on the node at or below the node's dir (pod rootfs
    /// overlays; any other is a leak: pods' own mounts live in their
    /// mount namespaces).
    pub fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .map(str::to_string)
            .collect()
    }

    /// Cgroups left below the pods' parent, in every hierarchy.
    pub fn cgroups(&self) -> Vec<String> {
        super::cgroups::children(&super::cgroups::own_parent_dirs(&self.cgroup_parent()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers left by a panicking test: killed and removed.
        if let Ok(out) = self.runc().args(["list", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.runc().args(["kill", id, "KILL"]).status();
                let dir = self.dir.path().join("pods").join(id);
                std::thread::sleep(std::time::Duration::from_millis(200));
                self.remove_container(id, &dir);
            }
        }
        for m in self.mounts().iter().rev() {
            let _ = umount2(Path::new(m), MntFlags::MNT_DETACH);
        }
        for dir in super::cgroups::own_parent_dirs(&self.cgroup_parent()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
