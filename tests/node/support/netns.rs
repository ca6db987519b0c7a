//! Network namespaces the harness makes, held open by a sleeping process
//! (killed on drop, which takes the namespace and its veths with it), and
//! the veth pairs a CNI plugin would make.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The node's bridge, in the node namespace; its address is every pod's
/// default gateway.
pub const BRIDGE: &str = "nb0";
pub const GATEWAY: &str = "10.88.0.1";
pub const PREFIX: u8 = 16;

pub struct Netns {
    holder: Child,
}

impl Netns {
    pub fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --net");
        let ns = Netns { holder };
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert!(
            crate::common::wait_until(Duration::from_secs(5), || {
                std::fs::read_link(ns.path()).is_ok_and(|l| l != own)
            }),
            "the holder never entered a new network namespace"
        );
        ns.sh("ip link set lo up");
        ns
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Runs a shell command in the namespace; its stdout, or a panic.
    pub fn sh(&self, script: &str) -> String {
        sh_in(&self.path(), script)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Runs `sh -c script` in the network namespace at `ns`; its stdout, or a
/// panic naming the script.
pub fn sh_in(ns: &Path, script: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the node namespace's bridge.
pub fn make_bridge(node: &Netns) {
    node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip addr add {GATEWAY}/{PREFIX} dev {BRIDGE} && \
         ip link set {BRIDGE} up"
    ));
}

/// What a CNI bridge plugin does for a new sandbox: a veth pair with
/// `host_if` on the bridge and `eth0` in the namespace of process `pid`,
/// there with `addr` and a default route through the bridge.
pub fn attach(node: &Netns, host_if: &str, pid: u32, addr: &str) {
    node.sh(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {pid} && \
         ip link set {host_if} master {BRIDGE} up"
    ));
    sh_in(
        Path::new(&format!("/proc/{pid}/ns/net")),
        &format!(
            "ip link set lo up && ip addr add {addr}/{PREFIX} dev eth0 && ip link set eth0 up && \
             ip route add default via {GATEWAY}"
        ),
    );
}
