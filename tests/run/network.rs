//! The workspace's network under real runc and the real kernel. The outer
//! container is emulated by a network namespace of the test's own ("outer")
//! in which `cvmd run` runs, with an uplink veth (MTU 1400) to a second
//! namespace ("internet") that has no route back to the workspace subnet:
//! only cvmd's NAT lets the workspace reach it. Nothing touches the host's
//! interfaces or iptables; the namespaces go with their holder processes.
//!
//! Needs root, runc, iptables, iproute2, busybox-static and docker-registry;
//! skips with a reason otherwise.

use crate::common::busybox::{self, busybox_layer};
use crate::common::prereq::{self, Need};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::image::{Compression, Format, ImageBuilder};
use crate::common::layers::*;
use crate::common::Registry;

fn tools_present() -> Need {
    for tool in ["runc", "iptables", "ip", "unshare", "nsenter"] {
        prereq::tool(tool)?;
    }
    Ok(())
}

/// A network namespace held open by a sleeping process; killed on drop.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --net");
        let ns = Netns { holder };
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(
            crate::common::wait_until(Duration::from_secs(5), || {
                std::fs::read_link(ns.path()).is_ok_and(|l| l != own)
            }),
            "the holder never entered a new netns"
        );
        ns.sh("ip link set lo up");
        ns
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    /// `nsenter --net=NS PROGRAM ARGS`.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        // By path: a test runs cvmd with a PATH that lacks tools.
        let nsenter = ["/usr/bin/nsenter", "/bin/nsenter"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nsenter");
        let mut c = Command::new(nsenter);
        c.arg(format!("--net={}", self.path())).arg(program);
        c
    }

    /// Runs a shell command in the namespace; its stdout, or a panic.
    fn sh(&self, script: &str) -> String {
        let out = self.command("sh").args(["-c", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread inside the namespace.
    fn on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A TCP server in `ns` answering `reply` to every connection and
/// reporting each peer's address.
fn serve(ns: &Netns, addr: &str, reply: &'static str) -> mpsc::Receiver<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    let addr = addr.to_string();
    let (bound_tx, bound_rx) = mpsc::channel();
    ns.on_thread(move || {
        let listener = TcpListener::bind(&addr).unwrap();
        bound_tx.send(()).unwrap();
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let _ = tx.send(conn.peer_addr().unwrap());
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    bound_rx.recv().unwrap();
    rx
}

/// An HTTP GET from inside `ns`; the response, or the error.
fn http_get(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.on_thread(move || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        Ok(body)
    })
    .join()
    .unwrap()
}

/// busybox-static with the applets the workspace scripts use.
fn busybox_image(script: &str) -> crate::common::image::Image {
    busybox::busybox_image(
        &[
            "sh", "sleep", "echo", "cat", "ls", "ip", "nc", "httpd", "mkdir", "tr", "sed",
        ],
        &["/bin/sh", "-c", script],
    )
}

struct Setup {
    _sandbox: Sandbox,
    state: tempfile::TempDir,
    _reg: Registry,
    cvmd: CvmdOnCache,
    reference: String,
}

impl Setup {
    /// Pushes the image and pulls it in the host's netns (the registry
    /// listens on the host's loopback), so `cvmd run` starts warm.
    fn new(repo: &str, script: &str) -> Setup {
        Setup::with_image(repo, &busybox_image(script))
    }

    fn with_image(repo: &str, image: &crate::common::image::Image) -> Setup {
        let sandbox = Sandbox::new();
        let state = tempfile::tempdir().unwrap();
        let reg = Registry::plain().unwrap();
        let reference = push(&reg, repo, "v1", image);
        let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
        cvmd.pull_ok(&reference);
        Setup {
            _sandbox: sandbox,
            state,
            _reg: reg,
            cvmd,
            reference,
        }
    }

    /// Unique per test and per checkout (runc names the cgroup after it).
    fn workspace(&self) -> String {
        let dir = self.state.path().file_name().unwrap().to_string_lossy();
        format!("ws-net-{}", dir.trim_start_matches('.'))
    }

    /// `cvmd run` inside `ns`, as PID 1 of the outer container would be.
    fn run(&self, ns: &Netns, extra: &[&str]) -> Command {
        let mut c = ns.command(crate::common::cvmd_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.cvmd.cache)
            .arg("--cache-dir")
            .arg(&self.cvmd.cache)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["--image", &self.reference, "--workspace", &self.workspace()])
            .args(["--pull-policy", "Never"])
            .args(if extra.contains(&"--runtime") {
                &[][..]
            } else {
                &["--runtime", "runc"][..]
            })
            .args(["--stop-timeout", "5"])
            .args(["--log-format", "text", "--log-level", "info"])
            .args(extra)
            .arg("run")
            .stdin(Stdio::null());
        c
    }
}

fn log_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const WORKSPACE_SCRIPT: &str = r#"
trap 'exit 0' TERM
echo "mtu=$(cat /sys/class/net/eth0/mtu)"
echo "links=$(ls /sys/class/net | tr '\n' ' ')"
ip route | sed 's/^/route: /'
echo "outer=$(nc -w 5 172.19.0.1 9001 </dev/null)"
echo "internet=$(nc -w 5 10.99.0.2 9002 </dev/null)"
mkdir -p /www && echo fwd-ok > /www/index.html
httpd -p 80 -h /www
echo serving
while :; do sleep 1 & wait $!; done
"#;

#[test]
fn network_veth_nat_port_forwards_mtu_and_cleanup() {
    require!(can_run());
    require!(tools_present());
    let setup = Setup::new("net/veth", WORKSPACE_SCRIPT);
    let outer = Netns::new();
    let internet = Netns::new();
    outer.sh(&format!(
        "ip link add up0 mtu 1400 type veth peer name inet0 mtu 1400 netns {} && \
         ip addr add 10.99.0.1/24 dev up0 && ip link set up0 up && \
         ip route add default via 10.99.0.2",
        internet.pid()
    ));
    internet.sh("ip addr add 10.99.0.2/24 dev inet0 && ip link set inet0 up");
    let from_workspace = serve(&outer, "0.0.0.0:9001", "outer-ok\n");
    let via_nat = serve(&internet, "10.99.0.2:9002", "internet-ok\n");

    // Leftovers of a crashed earlier run of the same workspace, and a rule
    // of another workspace that must survive.
    let plan = cvmd::network::Plan::new(&setup.workspace(), &Default::default());
    outer.sh(&format!(
        "ip link add {} type veth peer name {} && \
         iptables -w -t nat -A POSTROUTING -s 192.0.2.0/24 -m comment --comment cvmd:{} -j MASQUERADE && \
         iptables -w -t nat -A POSTROUTING -s 198.51.100.0/24 -m comment --comment cvmd:other -j MASQUERADE",
        plan.outer_if,
        plan.peer_if,
        setup.workspace()
    ));

    let child = setup
        .run(&outer, &["--ports", "8080:80"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cvmd_pid = child.id();
    // Drained on a thread so cvmd never blocks on a full pipe.
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());

    // A port forward from the "internet" to the outer container's address
    // (PREROUTING), once the workspace serves.
    let mut last = Err(String::new());
    let served = crate::common::wait_until(Duration::from_secs(60), || {
        last = http_get(&internet, "10.99.0.1:8080");
        last.as_ref().is_ok_and(|b| b.contains("fwd-ok"))
    });
    // From the outer container to its own address and to its loopback
    // (OUTPUT, route_localnet).
    let own = http_get(&outer, "10.99.0.1:8080");
    let lo = http_get(&outer, "127.0.0.1:8080");
    let during = outer.sh("ip -o link; ip -o addr; iptables-save");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cvmd_pid.cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = waiter.join().unwrap();
    let log = log_of(&out);
    assert!(served, "the port forward never answered: {last:?}\n{log}");
    assert!(own.as_ref().is_ok_and(|b| b.contains("fwd-ok")), "{own:?}");
    assert!(lo.as_ref().is_ok_and(|b| b.contains("fwd-ok")), "{lo:?}");
    assert_eq!(out.status.code(), Some(0), "{log}");

    assert!(
        log.contains("mtu=1400"),
        "eth0 takes the uplink's MTU: {log}"
    );
    assert!(log.contains("links=eth0 lo "), "{log}");
    assert!(
        log.contains("route: default via 172.19.0.1 dev eth0"),
        "{log}"
    );
    assert!(
        log.contains("outer=outer-ok"),
        "the outer veth address answers: {log}"
    );
    assert!(
        log.contains("internet=internet-ok"),
        "the uplink is reached through NAT: {log}"
    );
    assert_eq!(
        from_workspace.try_recv().unwrap().ip().to_string(),
        "172.19.0.2"
    );
    assert_eq!(
        via_nat.try_recv().unwrap().ip().to_string(),
        "10.99.0.1",
        "masqueraded to the uplink's address"
    );
    assert!(
        log.contains("phase=\"network\"") || log.contains("phase=network"),
        "timed as a phase: {log}"
    );
    assert!(
        log.contains("removed network leftovers of an earlier run") && log.contains("stale=2"),
        "{log}"
    );
    assert!(
        during.contains(&plan.outer_if) && during.contains("172.19.0.1/30"),
        "{during}"
    );

    let after = outer.sh("ip -o link; iptables-save");
    assert!(
        !after.contains(&plan.outer_if) && !after.contains(&plan.peer_if),
        "no veth remains: {after}"
    );
    assert!(
        !after.contains(&format!("cvmd:{}", setup.workspace())),
        "no rule of the workspace remains: {after}"
    );
    assert!(after.contains("cvmd:other"), "other rules stay: {after}");
}

#[test]
fn network_none_gives_only_loopback() {
    require!(can_run());
    require!(tools_present());
    let setup = Setup::new(
        "net/none",
        "echo \"links=$(ls /sys/class/net | tr '\\n' ' ')\"; ip -o link show lo",
    );
    let outer = Netns::new();
    let out = setup.run(&outer, &["--network", "none"]).output().unwrap();
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("links=lo") && !log.contains("eth0"), "{log}");
    assert!(log.contains("LOOPBACK,UP"), "lo is up: {log}");
    let after = outer.sh("ip -o link; iptables-save");
    assert!(!after.contains("cvm"), "{after}");
}

#[test]
fn network_bad_ports_are_refused_before_anything_runs() {
    let out = Command::new(crate::common::cvmd_bin())
        .args([
            "--image",
            "example.com/x:1",
            "--ports",
            "8080:80/sctp",
            "run",
        ])
        .env("CVMD_STATE_DIR", "/nonexistent-cvmd-state")
        .output()
        .unwrap();
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("invalid --ports: \"8080:80/sctp\" has a protocol other than tcp or udp"),
        "{log}"
    );
}

#[test]
fn network_failure_after_create_says_why_and_leaves_nothing() {
    require!(can_run());
    require!(tools_present());
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    let setup = Setup::new("net/fail", "exit 0");
    let outer = Netns::new();
    outer.sh("ip link add up0 type veth peer name up1 && ip addr add 10.98.0.1/24 dev up0 && ip link set up0 up && ip route add default via 10.98.0.2");
    // No iptables on PATH: the veth is up by then and must go again.
    let empty = tempfile::tempdir().unwrap();
    let out = setup
        .run(&outer, &["--runtime", runc])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("iptables not found on PATH: install it"),
        "{log}"
    );
    let plan = cvmd::network::Plan::new(&setup.workspace(), &Default::default());
    let after = outer.sh("ip -o link");
    assert!(!after.contains(&plan.outer_if), "the veth is gone: {after}");
    let runtime_root = setup.state.path().join("runtime");
    let left: Vec<_> = std::fs::read_dir(&runtime_root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(setup.state.path().to_str().unwrap()));
}

#[test]
fn network_subnet_overlapping_the_outer_network_is_refused() {
    require!(can_run());
    require!(tools_present());
    let setup = Setup::new("net/overlap", "exit 0");
    let outer = Netns::new();
    outer.sh("ip link add up0 type veth peer name up1 && ip addr add 172.19.3.4/16 dev up0 && ip link set up0 up");
    let out = setup.run(&outer, &[]).output().unwrap();
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("the workspace subnet 172.19.0.0/30 overlaps 172.19.3.4/16 of the outer container: set CVMD_SUBNET"),
        "{log}"
    );
    let plan = cvmd::network::Plan::new(&setup.workspace(), &Default::default());
    assert!(!outer.sh("ip -o link").contains(&plan.outer_if));
}

fn prerequisites() -> Need {
    can_run()?;
    tools_present()
}

/// An image whose `/sbin/init` is a busybox script: cvmd boots it as an
/// init, with the capabilities an init gets (NET_ADMIN among them), as a
/// real workspace image with systemd would be.
fn init_image(script: &str) -> crate::common::image::Image {
    let layer = busybox_layer(&["sh", "sleep", "echo", "cat", "ip", "nc", "mkdir", "mount"])
        .dir("sbin", 0o755)
        .file(
            "sbin/init",
            format!("#!/bin/sh\n{script}").as_bytes(),
            0o755,
        );
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .build()
}

/// Root in the workspace attacks what only the outer container should
/// reach: its loopback (CVE-2020-8558: route 127.0.0.0/8 via the outer
/// end, and let the 127.0.0.1 answers in on our side), then the node's
/// metadata address through cvmd's NAT. Then waits to be stopped.
const ATTACK_SCRIPT: &str = r#"
trap 'exit 0' 37 TERM
ip addr del 127.0.0.1/8 dev lo
ip route add 127.0.0.0/8 via 172.19.0.1 dev eth0
f=/proc/sys/net/ipv4/conf/eth0/route_localnet
echo 1 > $f 2>/dev/null || { mount -o remount,bind,rw /proc/sys && echo 1 > $f; } 2>/dev/null || { mkdir -p /p && mount -t proc proc /p && echo 1 > /p/sys/net/ipv4/conf/eth0/route_localnet; } 2>/dev/null
echo "route_localnet=$(cat $f)"
out=$(nc -w 3 127.0.0.1 9003 </dev/null 2>&1); echo "loopback: rc=$? $out"
out=$(nc -w 3 169.254.169.254 80 </dev/null 2>&1); echo "metadata: rc=$? $out"
echo attack-done
while :; do sleep 1 & wait $!; done
"#;

/// What one attacking workspace achieved.
struct Attack {
    log: String,
    /// `iptables-save -c` of the outer netns while the workspace ran.
    counters: String,
}

impl Attack {
    /// The line the workspace printed for `what`.
    fn line(&self, what: &str) -> String {
        self.log
            .lines()
            .find_map(|l| {
                l.split_once(&format!("{what}: "))
                    .map(|(_, r)| r.to_string())
            })
            .unwrap_or_else(|| panic!("no {what} line in: {}", self.log))
    }

    /// Packets the workspace's rules in `table` matching `spec` dropped
    /// (in all chains).
    fn dropped(&self, table: &str, spec: &str, tag: &str) -> u64 {
        let mut in_table = false;
        let mut found = false;
        let mut packets = 0;
        for l in self.counters.lines() {
            if let Some(t) = l.strip_prefix('*') {
                in_table = t == table;
            }
            if in_table && l.contains(spec) && l.contains(tag) && l.contains("-j DROP") {
                found = true;
                let n = l.trim_start_matches('[').split(':').next().unwrap();
                packets += n.parse::<u64>().unwrap();
            }
        }
        assert!(
            found,
            "no {table} rule {spec} tagged {tag} in:\n{}",
            self.counters
        );
        packets
    }
}

/// Runs the attacking workspace in `outer` with `extra` settings; once it
/// reports, reads the outer netns' rule counters, then stops cvmd.
fn attack(setup: &Setup, outer: &Netns, extra: &[&str], env: &[(&str, &str)]) -> Attack {
    use std::io::BufRead;
    let mut cmd = setup.run(outer, extra);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("attack-done") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let done = rx.recv_timeout(Duration::from_secs(90)).is_ok();
    let counters = outer.sh("iptables-save -c");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(done, "the workspace never finished its attack:\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    Attack { log, counters }
}

#[test]
fn network_escape_outer_loopback_and_link_local_metadata_are_unreachable() {
    require!(prerequisites());
    let setup = Setup::with_image("net/escape", &init_image(ATTACK_SCRIPT));
    let outer = Netns::new();
    // A "node" namespace holding a metadata-style service on
    // 169.254.169.254, routed from the outer container as a node routes
    // its pods' link-local traffic.
    let node = Netns::new();
    outer.sh(&format!(
        "ip link add md0 type veth peer name md1 netns {} && \
         ip addr add 10.97.0.1/24 dev md0 && ip link set md0 up && \
         ip route add 169.254.0.0/16 via 10.97.0.2",
        node.pid()
    ));
    node.sh("ip addr add 10.97.0.2/24 dev md1 && ip link set md1 up && ip addr add 169.254.169.254/32 dev lo");
    let admin = serve(&outer, "127.0.0.1:9003", "outer-admin-secret\n");
    let metadata = serve(&node, "169.254.169.254:80", "node-credentials\n");
    let plan = cvmd::network::Plan::new(&setup.workspace(), &Default::default());
    let tag = format!("cvmd:{}", setup.workspace());
    let from_veth = format!("-d 127.0.0.0/8 -i {}", plan.outer_if);
    let to_metadata = format!("-d 169.254.0.0/16 -i {}", plan.outer_if);

    // With and without port forwards (route_localnet on the outer veth only
    // with them).
    for extra in [&["--ports", "8080:80"][..], &[][..]] {
        let a = attack(&setup, &outer, extra, &[]);
        let (lo, md) = (a.line("loopback"), a.line("metadata"));
        assert!(
            lo.starts_with("rc=1") && lo.contains("timed out"),
            "{extra:?}: the loopback attempt times out (dropped, not refused): {lo}\n{}",
            a.log
        );
        assert!(
            md.starts_with("rc=1") && md.contains("timed out"),
            "{extra:?}: the metadata attempt times out: {md}\n{}",
            a.log
        );
        assert!(!lo.contains("secret") && !md.contains("credentials"));
        assert!(
            a.dropped("raw", &from_veth, &tag) > 0,
            "{extra:?}: the martian rule dropped the SYNs:\n{}\n{}",
            a.counters,
            a.log
        );
        assert!(
            a.dropped("filter", &to_metadata, &tag) > 0,
            "{extra:?}: the link-local rule dropped the SYNs:\n{}",
            a.counters
        );
        assert!(
            admin.try_recv().is_err(),
            "{extra:?}: the loopback listener saw a connection"
        );
        assert!(
            metadata.try_recv().is_err(),
            "{extra:?}: the metadata listener saw a connection"
        );
    }

    // The setting that opens link-local: the same metadata attempt now
    // connects, so the setup above could have seen one.
    let a = attack(&setup, &outer, &[], &[("CVMD_ALLOW_LINK_LOCAL", "true")]);
    let md = a.line("metadata");
    assert!(
        md.starts_with("rc=0") && md.contains("node-credentials"),
        "{md}\n{}",
        a.log
    );
    assert_eq!(
        metadata.try_recv().unwrap().ip().to_string(),
        "10.97.0.1",
        "reached through the NAT"
    );
    assert!(admin.try_recv().is_err(), "the loopback stays closed");
    let after = outer.sh("iptables-save");
    assert!(
        !after.contains(&tag),
        "no rule of the workspace remains: {after}"
    );
}
