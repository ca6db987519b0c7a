//! cvmd in the shape it is deployed in: several pods on one node, each cvmd
//! PID 1 of its own privileged container, all sharing one layer cache
//! (tests/node_support/ builds the node). Needs root, runc, iproute2,
//! debootstrap and docker-registry; skips with a reason otherwise (and
//! fails under CI=true).

mod common;
mod node_support;

use std::time::Duration;

use node_support::{checks, fixtures, Exit, Node, PodConfig};

/// A workspace pod boots its image under the runc inside the pod, serves
/// `cvmctl`, reads its files, and stops cleanly on SIGTERM.
#[test]
fn node_pod_runs_a_workspace_and_stops_on_sigterm() {
    if !node_support::can_run() {
        return;
    }
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let mut pod = node.start(PodConfig::run("ws-smoke", &images[0]));
    let up = pod.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", pod.log());
    let check = pod.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat());
    assert!(
        check.status.success(),
        "the workspace reads its image: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let links = pod.exec(&["ip", "-o", "link"]);
    assert!(
        String::from_utf8_lossy(&links.stdout).contains("cvm"),
        "the workspace's veth is in the pod: {}",
        String::from_utf8_lossy(&links.stdout)
    );
    let exit = pod.stop(Duration::from_secs(20));
    assert_eq!(exit, Exit::Code(0), "{}", pod.log());
    assert!(checks::panics(&pod.log()).is_empty(), "{}", pod.log());
}
