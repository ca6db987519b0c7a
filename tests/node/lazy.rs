//! Lazy start in the shape it is deployed in (issue #15): an eStargz image
//! (converted by `cvmd convert` in a pod, against the node's registry)
//! started in pods, each cvmd PID 1 of its own mount, PID and network
//! namespaces, all sharing the node cache and its chunk cache. The pods
//! reach the registry through a fault proxy on the bridge, which paces the
//! link (so the workspaces are still served on demand when the test looks)
//! and counts what was fetched.

use std::time::Duration;

use crate::common::proxy::FaultProxy;
use crate::common::wait_until;
use crate::support::pod::Pod;
use crate::support::{checks, fixtures, Exit, Node, PodConfig};

const UP: Duration = Duration::from_secs(120);
const GRACE: Duration = Duration::from_secs(20);
const REPO: &str = "node/lazy";

/// The eStargz copy of the lazy fixture in the node's registry.
struct Estargz {
    reference: String,
    /// Its layers' blob digests (`sha256:...`), in manifest order.
    blobs: Vec<String>,
}

/// Converts the lazy fixture with `cvmd convert` in a one-shot pod, then
/// empties the node cache (the conversion pulled the source into it): the
/// tests start on an empty node.
fn estargz(node: &Node) -> Estargz {
    let source = fixtures::lazy_source_image(node);
    let reference = format!("{}/{REPO}:v1", node.registry_host());
    let (exit, log) = node.run_once(
        PodConfig::convert("convert", &source, &reference),
        Duration::from_secs(120),
    );
    assert_eq!(exit, Exit::Code(0), "cvmd convert in a pod: {log}");
    node.clear_cache();
    let manifest = node.manifest(REPO, "v1");
    let blobs = manifest["layers"]
        .as_array()
        .expect("the converted manifest's layers")
        .iter()
        .map(|l| {
            assert!(
                l["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string(),
                "cvmd convert left a layer without a TOC: {l}"
            );
            l["digest"].as_str().unwrap().to_string()
        })
        .collect();
    Estargz { reference, blobs }
}

/// The workspace's image source as `cvmctl status` gives it in the pod.
fn source(pod: &Pod) -> String {
    let out = pod.exec(&["cvmctl", "status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|s| s["image"]["source"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether cvmd's log says every layer was served on demand, and never
/// that it fell back to a full pull.
/// Once the pods are gone: the store and the chunk cache verify, nothing
/// of theirs is left on the node, and no FUSE mount of the image.
fn assert_node_clean(node: &Node, image: &Estargz) {
    let mut problems = checks::store_problems(&node.cache_dir());
    problems.extend(checks::chunk_problems(&node.cache_dir()));
    problems.extend(checks::leftovers(node));
    problems.extend(fuse_on_node(node, &image.blobs));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn started_lazily(log: &str, layers: usize) -> bool {
    log.contains(&format!(
        "lazy start: {layers} of {layers} layers are served on demand"
    )) && !log.contains("pulling the image whole")
}

/// The lazy layers cvmd (PID 1) has mounted in its pod.
fn fuse_in_pod(pod: &Pod) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", pod.pid())).unwrap();
    checks::fuse_mounts(&info)
}

/// FUSE mounts on the node (this process's mount table) that a pod left:
/// any below the node's dir, or serving one of `blobs`. Each pod's mounts
/// live in its mount namespace and must go with it. Waits up to 10 s: a
/// mount namespace is released after its last process is reaped.
fn fuse_on_node(node: &Node, blobs: &[String]) -> Vec<String> {
    let root = node
        .cache_dir()
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let left = || -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        checks::fuse_mounts(&info)
            .into_iter()
            .filter(|l| {
                l.split(' ').nth(4).is_some_and(|p| p.starts_with(&root))
                    || blobs.iter().any(|b| l.contains(&b[..19]))
            })
            .collect()
    };
    wait_until(Duration::from_secs(10), || left().is_empty());
    left()
}

/// The closed byte ranges (`bytes=A-B`: spans of chunks, the TOC and its
/// footer) asked of each blob; the background pulls' resumes are open
/// (`bytes=A-`) and whole GETs have none.
fn spans(proxy: &FaultProxy) -> Vec<(String, u64, u64)> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| {
            let blob = crate::common::proxy::blob_digest_of(&r.path)?.to_string();
            let range = r.range?;
            let (lo, hi) = range.strip_prefix("bytes=")?.split_once('-')?;
            Some((blob, lo.parse().ok()?, hi.parse().ok()?))
        })
        .collect()
}

/// Spans asked for twice, or overlapping another span of the same blob:
/// each byte of a blob is fetched on demand at most once per node.
fn fetched_twice(mut spans: Vec<(String, u64, u64)>) -> Vec<String> {
    spans.sort();
    spans
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[1].1 <= w[0].2)
        .map(|w| format!("{} {}-{} and {}-{}", w[0].0, w[0].1, w[0].2, w[1].1, w[1].2))
        .collect()
}

/// Successful GETs of `blob` that were not spans: whole downloads and
/// their resumes.
fn whole_gets(proxy: &FaultProxy, blob: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && (200..300).contains(&r.status)
                && crate::common::proxy::blob_digest_of(&r.path) == Some(blob)
                && r.range.as_deref().is_none_or(|range| range.ends_with('-'))
        })
        .count()
}

fn check_files(pod: &Pod) -> std::process::Output {
    pod.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat())
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Three pods start the eStargz image at once on an empty node: each
/// boots lazily (its own FUSE mounts, in its own mount namespace), reads
/// every file of the image as its true bytes while still served on demand;
/// each span is fetched once for the node (the chunk cache and the TOC
/// copy are shared across pods), each blob downloaded whole once, and the
/// layers published once; after the pods stop, the store and chunk cache
/// verify and no mount, lease or FUSE mount is left on the node.
#[test]
fn node_lazy_start_in_three_pods_fetches_each_span_once_per_node() {
    require!(support_can_run());
    let node = Node::new();
    let image = estargz(&node);
    let proxy = node.fault_proxy();
    // Spans at 256 KiB/s a request; the background pulls' whole-blob
    // downloads held at 1 KiB/s until the reads are done: the workspaces
    // boot and read on spans, however slowly the pods come up.
    proxy.throttle_blobs(256 << 10);
    proxy.throttle_whole_blobs(1 << 10);
    let reference = node.proxied(&proxy, &image.reference);
    let mut pods: Vec<Pod> = (0..3)
        .map(|i| node.start(PodConfig::run(&format!("lazy{i}"), &reference)))
        .collect();
    for pod in &mut pods {
        let up = pod.wait_running(UP);
        assert!(up.is_ok(), "{up:?}\n{}", pod.log());
    }
    let layers = image.blobs.len();
    for pod in &pods {
        assert!(
            started_lazily(&pod.log(), layers),
            "{} did not start lazily:\n{}",
            pod.id(),
            pod.log()
        );
        assert_eq!(
            fuse_in_pod(pod).len(),
            layers,
            "{}: one FUSE mount a layer in the pod: {:?}",
            pod.id(),
            fuse_in_pod(pod)
        );
        let src = source(pod);
        assert!(
            src.contains("lazily") && !src.contains("complete"),
            "{} is served on demand while the test reads: {src}",
            pod.id()
        );
    }
    // Nothing of the pods' mounts shows on the node.
    assert!(fuse_on_node(&node, &image.blobs).is_empty());

    let reads: Vec<std::process::Output> = std::thread::scope(|s| {
        let threads: Vec<_> = pods.iter().map(|p| s.spawn(|| check_files(p))).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (pod, read) in pods.iter().zip(&reads) {
        assert!(
            read.status.success(),
            "{} reads wrong bytes: {}\n{}",
            pod.id(),
            text(read),
            pod.log()
        );
    }

    proxy.throttle_whole_blobs(0);
    proxy.throttle_blobs(0);
    for pod in &pods {
        assert!(
            wait_until(Duration::from_secs(90), || source(pod)
                .contains("complete in cvmd's cache")),
            "{} never completed: {}\n{}",
            pod.id(),
            source(pod),
            pod.log()
        );
    }
    let spans = spans(&proxy);
    assert!(!spans.is_empty(), "no span was fetched");
    eprintln!(
        "{} spans, {} KiB fetched on demand for 3 pods; sources: {:?}",
        spans.len(),
        spans.iter().map(|(_, lo, hi)| hi - lo + 1).sum::<u64>() / 1024,
        pods.iter().map(source).collect::<Vec<_>>()
    );
    let twice = fetched_twice(spans);
    assert!(twice.is_empty(), "fetched twice on one node: {twice:#?}");
    for blob in &image.blobs {
        assert_eq!(
            whole_gets(&proxy, blob),
            1,
            "{blob} downloaded whole once for the node: {:#?}",
            proxy.requests()
        );
    }
    assert_eq!(
        checks::layers(&node.cache_dir()).len(),
        layers,
        "each layer published once"
    );
    // Warm reads from the published layers are the same bytes.
    assert!(check_files(&pods[0]).status.success(), "{}", pods[0].log());

    for pod in &mut pods {
        assert_eq!(pod.stop(GRACE), Exit::Code(0), "{}", pod.log());
        assert!(checks::panics(&pod.log()).is_empty(), "{}", pod.log());
    }
    drop(pods);
    assert_node_clean(&node, &image);
}

/// A pod stopped (SIGTERM) while its workspace is served on demand and a
/// read in it waits on the registry: cvmd ends with status 0 within the
/// grace period and leaves no FUSE mount, no half-published layer and no
/// unverified chunk.
#[test]
fn node_lazy_pod_stops_on_sigterm_while_a_read_waits_on_the_registry() {
    require!(support_can_run());
    let node = Node::new();
    let image = estargz(&node);
    let proxy = node.fault_proxy();
    proxy.throttle_blobs(256 << 10);
    let reference = node.proxied(&proxy, &image.reference);
    let mut pod = node.start(PodConfig::run("lazy-term", &reference));
    let up = pod.wait_running(UP);
    assert!(up.is_ok(), "{up:?}\n{}", pod.log());
    assert!(
        started_lazily(&pod.log(), image.blobs.len()),
        "{}",
        pod.log()
    );
    // The image's init has been loaded (over FUSE) and set its trap: the
    // stop tested here is the workspace's, not one of runc's init.
    assert!(
        wait_until(UP, || init_traps_sigterm(&pod)),
        "the workspace's init never set its SIGTERM trap:\n{}",
        pod.log()
    );
    // 16 KiB/s from now on, streams in flight too: reading the 2 MiB of
    // data takes minutes.
    proxy.throttle_blobs(16 << 10);
    let mut reader = pod.exec_spawn(&[
        "cvmctl",
        "exec",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/big/* > /dev/null",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        reader.try_wait().unwrap().is_none(),
        "the read did not wait on the registry"
    );
    let src = source(&pod);
    assert!(
        src.contains("lazily") && !src.contains("complete"),
        "served on demand when stopped: {src}"
    );
    assert!(!fuse_in_pod(&pod).is_empty());

    let began = std::time::Instant::now();
    let exit = pod.stop(GRACE);
    let took = began.elapsed();
    assert_eq!(exit, Exit::Code(0), "after {took:?}:\n{}", pod.log());
    assert!(took < GRACE, "took {took:?}");
    assert!(checks::panics(&pod.log()).is_empty(), "{}", pod.log());
    // The read the stop cut is no fault of the layer or the registry:
    // no error, no EIO warning in a clean stop's log.
    let log = pod.log();
    let noise: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("failed (EIO)"))
        .collect();
    assert!(noise.is_empty(), "a clean stop logged: {noise:#?}");
    // The reader went with the workspace.
    assert!(
        wait_until(Duration::from_secs(10), || reader
            .try_wait()
            .unwrap()
            .is_some()),
        "the reader outlived its pod"
    );
    drop(pod);
    assert_node_clean(&node, &image);
}

/// A pod SIGKILLed while its workspace is served on demand (cvmd, the
/// FUSE server, gone at once): its mounts go with its mount namespace,
/// none is left on the node, and the pod's next container on the same
/// state dir boots over what the dead one left, reads true bytes and
/// stops cleanly.
#[test]
fn node_sigkilled_lazy_pod_leaves_no_fuse_mount_and_restarts_on_its_state_dir() {
    require!(support_can_run());
    let node = Node::new();
    let image = estargz(&node);
    let proxy = node.fault_proxy();
    proxy.throttle_blobs(256 << 10);
    let reference = node.proxied(&proxy, &image.reference);
    let cfg = PodConfig::run("lazy-phoenix", &reference);
    let mut first = node.start(cfg.clone());
    let up = first.wait_running(UP);
    assert!(up.is_ok(), "{up:?}\n{}", first.log());
    assert!(
        started_lazily(&first.log(), image.blobs.len()),
        "{}",
        first.log()
    );
    assert!(!fuse_in_pod(&first).is_empty());
    // A read in flight when it dies.
    let mut reader = first.exec_spawn(&[
        "cvmctl",
        "exec",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/big/* > /dev/null",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let state = first.state_dir().to_path_buf();
    assert_eq!(
        first.kill(),
        Exit::Signal(nix::sys::signal::Signal::SIGKILL)
    );
    let left = fuse_on_node(&node, &image.blobs);
    assert!(left.is_empty(), "FUSE mounts of a dead pod: {left:#?}");
    // The reader's `runc exec` ends with the pod (its process died with
    // the pod's PID namespace).
    assert!(
        wait_until(Duration::from_secs(10), || reader
            .try_wait()
            .unwrap()
            .is_some()),
        "the reader outlived its pod"
    );
    drop(first);

    let mut again = node.start(cfg.restarted(&state));
    let up = again.wait_running(UP);
    assert!(up.is_ok(), "{up:?}\n{}", again.log());
    proxy.throttle_blobs(0);
    let read = check_files(&again);
    assert!(read.status.success(), "{}\n{}", text(&read), again.log());
    assert!(
        wait_until(Duration::from_secs(90), || source(&again)
            .contains("cvmd's cache")),
        "never completed: {}\n{}",
        source(&again),
        again.log()
    );
    assert_eq!(again.stop(GRACE), Exit::Code(0), "{}", again.log());
    assert!(checks::panics(&again.log()).is_empty(), "{}", again.log());
    drop(again);
    assert_node_clean(&node, &image);
}

/// The workspace's init in the pod: its name and the signals it catches
/// (`SigCgt`).
fn init_of(pod: &Pod) -> (String, u64) {
    let script = format!(
        "p=$(cat /run/cvmd/workspaces/{}/init.pid) && cat /proc/$p/comm && grep SigCgt /proc/$p/status",
        pod.name()
    );
    let out = pod.exec(&["sh", "-c", &script]);
    let out = String::from_utf8_lossy(&out.stdout);
    let mut lines = out.lines();
    let comm = lines.next().unwrap_or_default().to_string();
    let caught = lines
        .next()
        .and_then(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    (comm, caught)
}

/// Whether the workspace's init is the image's program (no longer runc's
/// own init, which loads it through the lazy mount) and catches SIGTERM
/// (the fixture's `trap`).
fn init_traps_sigterm(pod: &Pod) -> bool {
    let (comm, caught) = init_of(pod);
    !comm.starts_with("runc:") && !comm.is_empty() && caught >> (libc::SIGTERM - 1) & 1 == 1
}

/// A pod whose workspace's init is still runc's own, loading the image's
/// program through the lazy mount over a slow link: the container has
/// started, but cvmd does not say running, and `cvmctl status --ready`
/// fails, until the program runs. Stopped then, cvmd kills the init at
/// once and ends with 0 within the grace period, a clean stop of a
/// workspace that never ran. Sent SIGTERM, runc's init (a Go program, PID
/// 1 of its namespace) exited 2, and so did the pod.
#[test]
fn node_lazy_pod_loading_its_init_is_not_ready_and_stops_with_0() {
    require!(support_can_run());
    let node = Node::new();
    let image = estargz(&node);
    let proxy = node.fault_proxy();
    // The TOCs are a few KiB; busybox, read first by runc's init as it
    // executes it, takes many seconds at this rate.
    proxy.throttle_blobs(16 << 10);
    let reference = node.proxied(&proxy, &image.reference);
    let mut pod = node.start(PodConfig::run("lazy-early", &reference));
    assert!(
        wait_until(UP, || pod.log().contains("\"message\":\"container started")),
        "the container never started:\n{}",
        pod.log()
    );
    let (comm, _) = init_of(&pod);
    assert!(
        comm.starts_with("runc:["),
        "the init is already the image's ({comm:?}): the link was not slow enough to test this"
    );
    let ready = pod.exec(&["cvmctl", "status", "--ready"]);
    let status = pod.exec(&["cvmctl", "status"]);
    assert!(
        !ready.status.success() && !pod.log().contains("\"message\":\"workspace running\""),
        "ready while runc's init still loads the program:\n{}",
        text(&status)
    );
    assert!(text(&status).contains("start"), "{}", text(&status));
    let began = std::time::Instant::now();
    let exit = pod.stop(GRACE);
    let took = began.elapsed();
    assert_eq!(exit, Exit::Code(0), "after {took:?}:\n{}", pod.log());
    assert!(took < GRACE, "took {took:?}");
    assert!(
        pod.log().contains("has not started yet"),
        "says why: {}",
        pod.log()
    );
    assert!(checks::panics(&pod.log()).is_empty(), "{}", pod.log());
    drop(pod);
    assert_node_clean(&node, &image);
}

/// The harness's prerequisites, and /dev/fuse on this machine (the pods'
/// device node is the node's).
fn support_can_run() -> crate::common::prereq::Need {
    crate::support::can_run()?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("needs /dev/fuse: {e}"))
}
