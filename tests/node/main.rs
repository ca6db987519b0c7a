//! cvmd in the shape it is deployed in: several pods on one node, each cvmd
//! PID 1 of its own privileged container, all sharing one layer cache
//! (tests/node/support/ builds the node). Needs root, runc, iproute2,
//! debootstrap and docker-registry; skips with a reason otherwise (and
//! fails under CI=true).

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod lazy;
mod support;

use std::time::Duration;

use support::churn::{churn, ChurnConfig, ChurnReport, Outcome};
use support::{checks, fixtures, Exit, Node, PodConfig};

/// A workspace pod boots its image under the runc inside the pod, serves
/// `cvmctl`, reads its files, and stops cleanly on SIGTERM.
#[test]
fn node_pod_runs_a_workspace_and_stops_on_sigterm() {
    require!(support::can_run());
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

/// The first reproduction: 6 rounds of 6 concurrent `cvmd pull`
/// pods of one small image into a fresh shared cache. Every cvmd is PID 1,
/// so anything named after the PID is shared between them.
#[test]
fn node_concurrent_pulls_into_a_fresh_cache_all_succeed() {
    require!(support::can_run());
    let node = Node::new();
    let image = fixtures::small_image(&node);
    let mut failures = Vec::new();
    for round in 0..6 {
        node.clear_cache();
        let results: Vec<(Exit, String)> = std::thread::scope(|s| {
            let pulls: Vec<_> = (0..6)
                .map(|i| {
                    let (node, image) = (&node, &image);
                    s.spawn(move || {
                        let pod = PodConfig::pull(&format!("pull{round}x{i}"), image);
                        node.run_once(pod, Duration::from_secs(60))
                    })
                })
                .collect();
            pulls.into_iter().map(|p| p.join().unwrap()).collect()
        });
        for (i, (exit, log)) in results.iter().enumerate() {
            if *exit != Exit::Code(0) {
                let why = checks::one_error_line(log).unwrap_or_else(|e| format!("{e}:\n{log}"));
                failures.push(format!("round {round}, pod {i}: {exit:?}: {why}"));
            }
        }
        failures.extend(checks::store_problems(&node.cache_dir()));
    }
    assert!(
        failures.is_empty(),
        "{} failures in 36 pulls:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A cache budget smaller than any one image drops every other image, but
/// never the one being started: the run reaches running and reads its files.
#[test]
fn node_cache_budget_never_evicts_the_image_being_started() {
    require!(support::can_run());
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let (exit, log) = node.run_once(
        PodConfig::prefetch("prefetch", &[&images[1], &images[2]]),
        Duration::from_secs(60),
    );
    assert_eq!(exit, Exit::Code(0), "{log}");
    let mut pod =
        node.start(PodConfig::run("ws-budget", &images[0]).env("CVMD_CACHE_BUDGET", "1MiB"));
    let up = pod.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", pod.log());
    let check = pod.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat());
    assert!(
        check.status.success(),
        "the workspace reads its image:\n{}",
        pod.log()
    );
    assert_eq!(
        pod.stop(Duration::from_secs(20)),
        Exit::Code(0),
        "{}",
        pod.log()
    );
}

/// gc in one pod never removes what another pod mounts: the layers of a
/// running workspace, nor those of a `cvmd rootfs` mount left in a pod's
/// own mount namespace (which gc's mount table does not show), of an image
/// that shares no layer with a running workspace.
#[test]
fn node_gc_in_one_pod_keeps_layers_mounted_in_others() {
    require!(support::can_run());
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let mut running = node.start(PodConfig::run("ws-running", &images[0]));
    let up = running.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", running.log());
    let mut inspecting = node.start(PodConfig::run("ws-inspect", &images[2]));
    let up = inspecting.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", inspecting.log());
    let lone = fixtures::lone_image(&node);
    let rootfs = inspecting.exec(&["cvmd", "rootfs", &lone, "/run/cvmd/inspect"]);
    assert!(
        rootfs.status.success(),
        "cvmd rootfs: {}",
        String::from_utf8_lossy(&rootfs.stderr)
    );
    let (exit, log) = node.run_once(PodConfig::gc("gc", "1"), Duration::from_secs(60));
    assert_eq!(exit, Exit::Code(0), "{log}");

    let mut removed = checks::missing_mounted_layers(&running, &node.cache_dir());
    removed.extend(checks::missing_mounted_layers(
        &inspecting,
        &node.cache_dir(),
    ));
    assert!(removed.is_empty(), "{}\ngc: {log}", removed.join("\n"));

    let check = running.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat());
    assert!(
        check.status.success(),
        "the running workspace still reads its image after gc: {}\ngc: {log}",
        String::from_utf8_lossy(&check.stdout)
    );
    let check_at = fixtures::check_at("/run/cvmd/inspect");
    let check_at: Vec<&str> = check_at.iter().map(String::as_str).collect();
    let check = inspecting.exec(&check_at);
    assert!(
        check.status.success(),
        "the rootfs mounted in another pod still reads after gc: {}{}\ngc: {log}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(running.stop(Duration::from_secs(20)), Exit::Code(0));
    assert_eq!(inspecting.stop(Duration::from_secs(20)), Exit::Code(0));
}

/// Six pods starting, stopping, restarting and being SIGKILLed, workspaces
/// of three images that share layers, with gc and prefetch pods beside them
/// and a registry outage halfway. Every start boots or fails with one clear
/// line, and fails only while the registry is down; afterwards the store verifies and, once the next cvmd has run, no
/// dead pod left a mount, veth, iptables rule, cgroup or lease on the node.
/// `CVMD_NODE_CHURN_SECS` sets how long (60 s), `CVMD_NODE_SEED` replays a run.
#[test]
fn node_churn_with_gc_prefetch_sigkills_and_a_registry_outage() {
    require!(support::can_run());
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let secs = std::env::var("CVMD_NODE_CHURN_SECS").map_or(60, |s| s.parse().unwrap());
    let seed = std::env::var("CVMD_NODE_SEED").map_or_else(
        |_| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (now.as_secs() << 30) ^ u64::from(now.subsec_nanos()) | 1
        },
        |s| s.parse().unwrap(),
    );
    eprintln!("churn seed {seed} (CVMD_NODE_SEED replays it)");
    let cfg = ChurnConfig {
        pods: 6,
        duration: Duration::from_secs(secs),
        images,
        // Two of the three images fit: gc has work on every run.
        budget: "3MiB".into(),
        gc_every: Duration::from_secs(5),
        prefetch_every: Duration::from_secs(8),
        kill_percent: 30,
        registry_outage: true,
        seed,
    };
    let report = churn(&node, &cfg);
    eprintln!("{}", summary(&report));

    // The next cvmd on the node: a gc pod, whose job stale leases are.
    let (exit, log) = node.run_once(
        PodConfig::gc("gc-last", &cfg.budget),
        Duration::from_secs(60),
    );
    let mut problems = report.problems.clone();
    if exit != Exit::Code(0) {
        problems.push(format!("the last gc ended {exit:?}:\n{log}"));
    }
    // A start may fail only for a reason outside cvmd: the registry was
    // down while it ran.
    for start in &report.starts {
        if let Outcome::Failed(line) = &start.outcome {
            if !start.overlaps(report.outage) {
                problems.push(format!(
                    "{} ({}) failed with the registry up: {line}",
                    start.pod, start.image
                ));
            }
        }
    }
    problems.extend(checks::store_problems(&node.cache_dir()));
    problems.extend(checks::leftovers(&node));
    let running = report
        .starts
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Running(_)))
        .count();
    assert!(
        running >= cfg.pods,
        "only {running} starts reached running:\n{}",
        summary(&report)
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn summary(r: &ChurnReport) -> String {
    let count = |f: fn(&Outcome) -> bool| r.starts.iter().filter(|s| f(&s.outcome)).count();
    let mut s = format!(
        "{} starts in {:?}: {} running, {} failed, {} killed before running; {} one-shot pods; cache peak {} KiB\n",
        r.starts.len(),
        r.elapsed,
        count(|o| matches!(o, Outcome::Running(_))),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| matches!(o, Outcome::Killed)),
        r.one_shots,
        r.cache_peak_bytes / 1024
    );
    for start in &r.starts {
        if let Outcome::Failed(line) = &start.outcome {
            s.push_str(&format!("  {} ({}): {line}\n", start.pod, start.image));
        }
    }
    s
}

/// The soak benchmark (bench/soak.sh): `CVMD_SOAK_PODS` pods (8) churning
/// for `CVMD_SOAK_SECS` (600) under `CVMD_SOAK_BUDGET` (3MiB), with gc and
/// prefetch pods and some SIGKILLs but no registry outage; prints a table
/// and fails on any failed start or broken promise.
#[test]
#[ignore = "a benchmark: bench/soak.sh runs it"]
fn node_soak() {
    require!(support::can_run());
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
    let pods: usize = env("CVMD_SOAK_PODS", "8").parse().unwrap();
    let secs: u64 = env("CVMD_SOAK_SECS", "600").parse().unwrap();
    let budget = env("CVMD_SOAK_BUDGET", "3MiB");
    let budget_bytes =
        cvmd::config::parse_size(&budget).expect("CVMD_SOAK_BUDGET: a size like 3MiB");
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let (exit, log) = node.run_once(
        PodConfig::prefetch(
            "warm",
            &images.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        Duration::from_secs(60),
    );
    assert_eq!(exit, Exit::Code(0), "{log}");
    let cfg = ChurnConfig {
        pods,
        duration: Duration::from_secs(secs),
        images,
        budget: budget.clone(),
        gc_every: Duration::from_secs(10),
        prefetch_every: Duration::from_secs(15),
        kill_percent: 10,
        registry_outage: false,
        seed: 0x5eed_50a4,
    };
    let report = churn(&node, &cfg);
    let table = support::soak::table(&report, pods, &budget, budget_bytes);
    println!("\n{table}");
    if let Ok(out) = std::env::var("CVMD_SOAK_OUT") {
        std::fs::write(out, &table).unwrap();
    }
    let mut problems = report.problems.clone();
    problems.extend(checks::store_problems(&node.cache_dir()));
    assert!(
        problems.is_empty()
            && !report
                .starts
                .iter()
                .any(|s| matches!(s.outcome, Outcome::Failed(_))),
        "{}{}",
        summary(&report),
        problems.join("\n")
    );
}

/// While the registry is down a pull pod fails with one clear line; once
/// it is back the same pull succeeds (the harness's outage works, and cvmd
/// recovers from one).
#[test]
fn node_pull_during_a_registry_outage_fails_clearly_then_succeeds() {
    require!(support::can_run());
    let node = Node::new();
    let image = fixtures::small_image(&node);
    node.stop_registry();
    let pull = |name: &str| {
        node.run_once(
            PodConfig::pull(name, &image).env("CVMD_PULL_RETRIES", "1"),
            Duration::from_secs(60),
        )
    };
    let (exit, log) = pull("pull-down");
    assert_eq!(exit, Exit::Code(1), "{log}");
    let line = checks::one_error_line(&log).unwrap_or_else(|e| panic!("{e}:\n{log}"));
    assert!(
        line.contains(&node.registry_host()),
        "names the registry: {line}"
    );
    node.start_registry();
    let (exit, log) = pull("pull-up");
    assert_eq!(exit, Exit::Code(0), "{log}");
    assert!(checks::store_problems(&node.cache_dir()).is_empty());
}

/// A pod SIGKILLed while its workspace runs, restarted as its container
/// would be (same name, same state dir): the new cvmd boots the workspace
/// over what the dead one left, and a clean stop leaves no lease, mount,
/// veth or cgroup behind.
#[test]
fn node_sigkilled_pod_restarts_on_its_state_dir() {
    require!(support::can_run());
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let cfg = PodConfig::run("ws-phoenix", &images[1]);
    let mut first = node.start(cfg.clone());
    let up = first.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", first.log());
    let state = first.state_dir().to_path_buf();
    assert_eq!(
        first.kill(),
        Exit::Signal(nix::sys::signal::Signal::SIGKILL)
    );
    drop(first);

    let mut again = node.start(cfg.restarted(&state));
    let up = again.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", again.log());
    let check = again.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat());
    assert!(check.status.success(), "{}", again.log());
    assert_eq!(
        again.stop(Duration::from_secs(20)),
        Exit::Code(0),
        "{}",
        again.log()
    );
    assert!(checks::panics(&again.log()).is_empty(), "{}", again.log());
    drop(again);
    let left = checks::leftovers(&node);
    assert!(left.is_empty(), "{}", left.join("\n"));
}

/// Pod names are unique only within a Kubernetes namespace: two pods named
/// `alice` in two namespaces run side by side on one node, each with its
/// own lease and its own host ID range; once each ends for good (status 0)
/// its range goes back to the node.
#[test]
fn node_equal_pod_names_in_two_namespaces_get_their_own_identity() {
    require!(support::can_run());
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut pods: Vec<_> = ["team-a", "team-b"]
        .iter()
        .zip(&states)
        .map(|(ns, state)| {
            node.start(
                PodConfig::run("alice", &images[0])
                    .env("CVMD_POD_NAMESPACE", ns)
                    .env("CVMD_IDMAP", "auto")
                    .restarted(state.path()),
            )
        })
        .collect();
    for pod in &mut pods {
        let up = pod.wait_running(Duration::from_secs(60));
        assert!(up.is_ok(), "{up:?}\n{}", pod.log());
    }
    let table: std::collections::BTreeMap<String, u32> =
        serde_json::from_slice(&std::fs::read(node.cache_dir().join("idranges.json")).unwrap())
            .unwrap();
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        ["team-a/alice", "team-b/alice"],
        "{table:?}"
    );
    assert_ne!(table["team-a/alice"], table["team-b/alice"]);
    assert_eq!(checks::leases(&node.cache_dir()).len(), 2);
    for pod in &mut pods {
        let uid_map = pod.exec(&["cvmctl", "exec", "--", "cat", "/proc/self/uid_map"]);
        assert!(
            !String::from_utf8_lossy(&uid_map.stdout).contains("4294967295"),
            "the workspace runs in its own user namespace: {}",
            String::from_utf8_lossy(&uid_map.stdout)
        );
    }
    for pod in &mut pods {
        assert_eq!(
            pod.stop(Duration::from_secs(20)),
            Exit::Code(0),
            "{}",
            pod.log()
        );
    }
    let table: std::collections::BTreeMap<String, u32> =
        serde_json::from_slice(&std::fs::read(node.cache_dir().join("idranges.json")).unwrap())
            .unwrap();
    assert!(table.is_empty(), "ranges released at status 0: {table:?}");
    assert!(checks::leases(&node.cache_dir()).is_empty());
    // The hostPath holds every image's setuid binaries: root only.
    use std::os::unix::fs::PermissionsExt;
    for dir in ["", "blobs", "layers", "leases", "idranges.d"] {
        let meta = std::fs::metadata(node.cache_dir().join(dir)).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o700,
            "cache dir {dir:?}"
        );
    }
}

/// Hostile input in one pod harms no other: a ~1 KB layer of a 60 GiB
/// sparse file is refused by the image bound with one line naming the
/// bound and its setting, the cache is left as it was, and a workspace
/// running beside it keeps running.
#[test]
fn node_a_sparse_bomb_is_refused_and_the_cache_stays_as_it_was() {
    require!(support::can_run());
    let node = Node::new();
    let images = fixtures::shared_layer_images(&node);
    let mut neighbour = node.start(PodConfig::run("ws-neighbour", &images[0]));
    let up = neighbour.wait_running(Duration::from_secs(60));
    assert!(up.is_ok(), "{up:?}\n{}", neighbour.log());
    let before = (checks::layers(&node.cache_dir()), blobs(&node));

    let bomb = crate::common::image::ImageBuilder::new(crate::common::image::Format::Oci)
        .layer(crate::common::image::Layer::from_tar(
            crate::common::image::sparse_tar("bomb", 60 << 30, 0, b""),
            crate::common::image::Compression::Gzip,
        ))
        .build();
    let reference = node.push("node/bomb", "v1", &bomb);
    let (exit, log) = node.run_once(PodConfig::pull("bomb", &reference), Duration::from_secs(60));
    assert_eq!(exit, Exit::Code(1), "{log}");
    let line = checks::one_error_line(&log).unwrap_or_else(|e| panic!("{e}:\n{log}"));
    assert!(line.contains("CVMD_MAX_IMAGE_SIZE"), "{line}");

    // Nothing of the layer is kept; only the image's manifest and config
    // (small, verified, named by no record) stay until the next gc.
    let (layers_before, blobs_before) = &before;
    assert_eq!(&checks::layers(&node.cache_dir()), layers_before);
    let mut expected = blobs_before.clone();
    for d in [&bomb.manifest_digest, &bomb.config_digest] {
        expected.push(d.trim_start_matches("sha256:").to_string());
    }
    expected.sort();
    assert_eq!(blobs(&node), expected);
    let (exit, log) = node.run_once(PodConfig::gc("gc", "100GiB"), Duration::from_secs(60));
    assert_eq!(exit, Exit::Code(0), "{log}");
    assert_eq!(&blobs(&node), blobs_before, "gc collects them");
    let staging: Vec<_> = std::fs::read_dir(node.cache_dir().join("layers/staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
    assert!(checks::store_problems(&node.cache_dir()).is_empty());
    let check = neighbour.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat());
    assert!(check.status.success(), "{}", neighbour.log());
    assert_eq!(neighbour.stop(Duration::from_secs(20)), Exit::Code(0));
}

fn blobs(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node.cache_dir().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
