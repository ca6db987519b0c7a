//! The Kubernetes manifests in `deploy/kubernetes/` validate against the
//! Kubernetes API schemas (`kubernetes-validate --strict`, installed pinned
//! in a venv by `scripts/deps.sh`), and say what cvmd needs: every `CVMD_*`
//! variable they set is a real setting with a value cvmd accepts, the grace
//! period outlasts cvmd's stop timeout, the volumes are the kinds Sysbox
//! and the shared cache need, the readiness probe asks cvmctl.
//!
//! The YAML is read through the validator's own Python (PyYAML comes with
//! it) as JSON, so no YAML crate is needed here.

use crate::common::prereq::Need;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn venv() -> PathBuf {
    std::env::var_os("CVMD_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/cvmd-tools/venv"))
}

fn validator() -> Need<PathBuf> {
    let bin = venv().join("bin/kubernetes-validate");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing (scripts/deps.sh installs it)",
            bin.display()
        ))
    }
}

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "no manifests in {}", dir.display());
    files.push(containerd_variant());
    files
}

/// The workspace pod with its commented-out containerd image backend lines
/// switched on (written once per test process), so the example a user
/// uncomments is checked like the rest.
fn containerd_variant() -> PathBuf {
    let out = std::env::temp_dir().join(format!(
        "cvmd-manifests-{}/workspace-pod-containerd.yaml",
        std::process::id()
    ));
    if !out.exists() {
        let pod = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/workspace-pod.yaml"),
        )
        .unwrap();
        let keys = [
            "- name:",
            "value:",
            "mountPath:",
            "hostPath:",
            "path:",
            "type:",
        ];
        let on: Vec<String> = pod
            .lines()
            .map(|line| {
                let indent = line.len() - line.trim_start().len();
                match line.trim_start().strip_prefix("# ") {
                    Some(code) if keys.iter().any(|k| code.trim_start().starts_with(k)) => {
                        format!("{}{code}", &line[..indent])
                    }
                    _ => line.to_string(),
                }
            })
            .collect();
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&out, on.join("\n") + "\n").unwrap();
    }
    out
}

#[test]
fn the_containerd_variant_of_the_workspace_pod_mounts_the_socket_and_root() {
    require!(validator());
    let doc = load(&containerd_variant());
    let spec = pod_spec(&doc);
    let c = &spec["containers"][0];
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"CVMD_IMAGE_BACKEND"), "{env:?}");
    assert_eq!(
        volume(spec, "containerd-socket")["hostPath"]["path"],
        "/run/containerd/containerd.sock"
    );
    // Same path inside as on the node: the snapshot mounts name it.
    assert_eq!(
        volume(spec, "containerd-root")["hostPath"]["path"],
        "/var/lib/containerd"
    );
    assert_eq!(mount(c, "/var/lib/containerd")["name"], "containerd-root");
    assert_eq!(
        mount(c, "/run/containerd/containerd.sock")["name"],
        "containerd-socket"
    );
}

fn validate(bin: &Path, file: &Path) -> std::process::Output {
    Command::new(bin)
        .args(["--strict", "--no-warn"])
        .arg(file)
        .output()
        .expect("run kubernetes-validate")
}

/// The workload (the one Pod or DaemonSet) of a YAML file, as JSON.
fn load(file: &Path) -> Value {
    let mut workloads: Vec<Value> = load_all(file)
        .into_iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Pod" | "DaemonSet")))
        .collect();
    assert_eq!(workloads.len(), 1, "{}: one workload", file.display());
    workloads.remove(0)
}

/// Every document of a YAML file, as JSON.
fn load_all(file: &Path) -> Vec<Value> {
    let py = venv().join("bin/python3");
    let out = Command::new(py)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

fn volume<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount<'a>(container: &'a Value, path: &str) -> &'a Value {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"))
}

fn default_stop_timeout() -> u64 {
    cvmd::config::SETTINGS
        .iter()
        .find(|s| s.key == "stop_timeout")
        .and_then(|s| s.default)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let bin = require!(validator());
    for file in manifests() {
        let out = validate(&bin, &file);
        assert!(
            out.status.success(),
            "{} does not validate:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The validator is not a no-op: a misspelt field fails it.
#[test]
fn validator_rejects_a_broken_manifest() {
    let bin = require!(validator());
    let dir = tempfile::tempdir().unwrap();
    let pod = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/workspace-pod.yaml"),
    )
    .unwrap();
    let broken = pod.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:");
    assert_ne!(broken, pod);
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let out = validate(&bin, &file);
    assert!(!out.status.success(), "a misspelt field passed validation");
}

/// Every `CVMD_*` variable the manifests set names a setting, and every
/// literal value is one cvmd accepts (resolved through cvmd's own settings
/// parser).
#[test]
fn manifest_env_vars_are_real_cvmd_settings() {
    require!(validator());
    for file in manifests() {
        let doc = load(&file);
        for c in pod_spec(&doc)["containers"].as_array().unwrap() {
            let mut literal = Vec::new();
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap();
                if !name.starts_with("CVMD_") && !name.starts_with("CODER_") {
                    continue;
                }
                assert!(
                    cvmd::config::SETTINGS
                        .iter()
                        .any(|s| s.env == name || s.envbox == Some(name)),
                    "{}: {name} is not a cvmd setting",
                    file.display()
                );
                if let Some(v) = e["value"].as_str() {
                    literal.push((name.to_string(), v.to_string()));
                }
            }
            let cmd = clap::Command::new("cvmd").args(cvmd::config::args());
            let matches = cmd.try_get_matches_from(["cvmd"]).unwrap();
            let lookup = |k: &str| literal.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if let Err(e) = cvmd::config::Settings::resolve(&matches, &lookup) {
                // The pull secret path exists only in a pod; everything else
                // must resolve.
                panic!("{}: cvmd refuses the values: {e}", file.display());
            }
        }
    }
}

#[test]
fn workspace_pod_gives_cvmd_what_it_needs() {
    require!(validator());
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/workspace-pod.yaml");
    let doc = load(&file);
    let spec = pod_spec(&doc);
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);

    // A death before cvmd could write its termination log still says why.
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    // The disk one workspace may take is bounded: every emptyDir has a
    // sizeLimit, and the container's ephemeral-storage limit covers them.
    let gib = |q: &Value| -> u64 {
        let q = q.as_str().unwrap_or_else(|| panic!("not a quantity: {q}"));
        q.strip_suffix("Gi")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{q}: give it in Gi"))
    };
    let empty_dirs: u64 = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["emptyDir"].is_object())
        .map(|v| gib(&v["emptyDir"]["sizeLimit"]))
        .sum();
    assert!(empty_dirs > 0);
    let limit = gib(&c["resources"]["limits"]["ephemeral-storage"]);
    assert!(
        limit > empty_dirs,
        "ephemeral-storage limit {limit}Gi must exceed the emptyDirs' {empty_dirs}Gi"
    );
    assert!(c["resources"]["requests"]["ephemeral-storage"].is_string());

    // The kubelet's SIGKILL comes after cvmd's own (stop timeout) plus
    // time to delete the container and unmount.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    let stop = env("CVMD_STOP_TIMEOUT")
        .and_then(|e| e["value"].as_str().map(|v| v.parse::<u64>().unwrap()))
        .unwrap_or_else(default_stop_timeout);
    assert!(
        grace >= stop + 5,
        "terminationGracePeriodSeconds {grace} must exceed the stop timeout {stop} by 5 s"
    );

    // CPU and memory from the downward API, in units cvmd parses: whole
    // cores and bytes (divisor 1).
    for (name, resource) in [
        ("CVMD_CPUS", "limits.cpu"),
        ("CVMD_MEMORY", "limits.memory"),
    ] {
        let e = env(name).unwrap_or_else(|| panic!("{name} is not set"));
        let r = &e["valueFrom"]["resourceFieldRef"];
        assert_eq!(r["resource"], resource, "{name}");
        assert_eq!(
            r["divisor"], "1",
            "{name}: cvmd takes whole cores and bytes"
        );
    }

    // The pull secret is a file inside a mounted secret.
    let secret_path = env("CVMD_PULL_SECRET").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| secret_path.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("CVMD_PULL_SECRET points into no mount");
    let vol = volume(spec, secret_mount["name"].as_str().unwrap());
    assert!(vol["secret"].is_object(), "the pull secret is not a secret");

    // The node-wide cache on a hostPath; Sysbox's data root on disk, not
    // tmpfs; kernel modules and sources read-only from the node.
    let cache = volume(spec, mount(c, "/var/lib/cvmd")["name"].as_str().unwrap());
    assert!(cache["hostPath"].is_object(), "the cache is not a hostPath");
    let sysbox = volume(spec, mount(c, "/var/lib/sysbox")["name"].as_str().unwrap());
    assert!(sysbox["emptyDir"].is_object(), "/var/lib/sysbox: {sysbox}");
    assert_ne!(
        sysbox["emptyDir"]["medium"], "Memory",
        "sysbox-mgr refuses tmpfs"
    );
    for path in ["/lib/modules", "/usr/src"] {
        let m = mount(c, path);
        assert_eq!(m["readOnly"], true, "{path} must be read-only");
        let v = volume(spec, m["name"].as_str().unwrap());
        assert_eq!(v["hostPath"]["path"], path);
    }

    // Nothing the pod mounts hides what the outer image ships for cvmd:
    // the shiftfs source under the node's /usr/src would be invisible.
    let shiftfs_src = cvmd::config::SETTINGS
        .iter()
        .find(|s| s.key == "shiftfs_src")
        .and_then(|s| s.default)
        .unwrap();
    for m in c["volumeMounts"].as_array().unwrap() {
        let at = m["mountPath"].as_str().unwrap();
        assert!(
            !Path::new(shiftfs_src).starts_with(at),
            "{at} is mounted over the shiftfs source {shiftfs_src}"
        );
    }

    let probe = &c["readinessProbe"]["exec"]["command"];
    assert_eq!(probe, &serde_json::json!(["cvmctl", "status", "--ready"]));
    // A loaded node misses the default 1 s during a cold pull; liveness
    // must not restart a pod whose cvmd answers, whatever its phase.
    let ready = &c["readinessProbe"];
    assert!(
        ready["timeoutSeconds"].as_u64().unwrap_or(1) >= 5,
        "{ready}"
    );
    let live = &c["livenessProbe"];
    assert_eq!(
        live["exec"]["command"],
        serde_json::json!(["cvmctl", "status"]),
        "alive = cvmd answers, in any phase"
    );
    assert!(live["timeoutSeconds"].as_u64().unwrap_or(1) >= 10, "{live}");
    let patience = live["periodSeconds"].as_u64().unwrap_or(10)
        * live["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        patience >= 120,
        "liveness gives up after {patience} s: {live}"
    );
}

#[test]
fn prefetch_daemonset_fills_the_same_cache() {
    require!(validator());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let pod = load(&dir.join("workspace-pod.yaml"));
    let ds = load(&dir.join("prefetch-daemonset.yaml"));
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = pod_spec(&ds);
    let c = &spec["containers"][0];
    // cvmd itself keeps the rounds (`prefetch --every`): no shell loop.
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command[..3], ["cvmd", "prefetch", "--every"], "{command:?}");
    let every: u64 = command[3].parse().unwrap();
    assert!(every >= 600, "a round every {every} s hammers the registry");
    assert!(command.len() > 4, "no images: {command:?}");
    // Its metrics are served where the pod and Prometheus look for them.
    let env = c["env"].as_array().unwrap();
    let addr = env
        .iter()
        .find(|e| e["name"] == "CVMD_METRICS_ADDR")
        .and_then(|e| e["value"].as_str())
        .expect("CVMD_METRICS_ADDR");
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(c["ports"][0]["containerPort"].to_string(), port);
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port);
    let cache_path = |spec: &Value, c: &Value| {
        let m = mount(c, "/var/lib/cvmd");
        volume(spec, m["name"].as_str().unwrap())["hostPath"]["path"].clone()
    };
    assert_eq!(
        cache_path(spec, c),
        cache_path(pod_spec(&pod), &pod_spec(&pod)["containers"][0]),
        "the DaemonSet must fill the cache the workspaces read"
    );
}

const POD_FILES: [&str; 2] = ["workspace-pod.yaml", "workspace-pod-pvc.yaml"];

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name)
}

/// A Kubernetes quantity in bytes; only the suffixes the manifests use.
fn bytes(q: &Value) -> u64 {
    let q = q.as_str().unwrap_or_else(|| panic!("not a quantity: {q}"));
    let (n, unit) = match q.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => q.split_at(i),
        None => (q, ""),
    };
    let unit = match unit {
        "" => 1,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => panic!("unit {other} in {q}"),
    };
    n.parse::<u64>().unwrap() * unit
}

/// The pod's disk use on the node is bounded: every emptyDir has a
/// sizeLimit, the container's ephemeral-storage limit covers them all (so
/// a volume's own limit, not the pod total, is reached first) and the
/// request is within the limit; a death before cvmd writes its termination
/// message still shows why.
#[test]
fn workspace_pods_bound_their_disk_and_explain_their_end() {
    require!(validator());
    for name in POD_FILES {
        let doc = load(&deploy_file(name));
        let spec = pod_spec(&doc);
        let c = &spec["containers"][0];
        assert_eq!(
            c["terminationMessagePolicy"], "FallbackToLogsOnError",
            "{name}"
        );
        let mut empty_dirs = 0;
        for v in spec["volumes"].as_array().unwrap() {
            if v["emptyDir"].is_object() {
                empty_dirs += bytes(&v["emptyDir"]["sizeLimit"]);
            }
        }
        let sysbox = volume(spec, mount(c, "/var/lib/sysbox")["name"].as_str().unwrap());
        assert!(sysbox["emptyDir"]["sizeLimit"].is_string(), "{name}");
        let request = bytes(&c["resources"]["requests"]["ephemeral-storage"]);
        let limit = bytes(&c["resources"]["limits"]["ephemeral-storage"]);
        assert!(request <= limit, "{name}: request above limit");
        assert!(
            limit > empty_dirs,
            "{name}: ephemeral-storage limit {limit} does not cover the emptyDirs' {empty_dirs}"
        );
    }
    // Without a claim the state dir (the writable layer) is an emptyDir and
    // bounded too.
    let doc = load(&deploy_file("workspace-pod.yaml"));
    let spec = pod_spec(&doc);
    let state = volume(
        spec,
        mount(&spec["containers"][0], "/run/cvmd")["name"]
            .as_str()
            .unwrap(),
    );
    assert!(state["emptyDir"]["sizeLimit"].is_string(), "{state}");
}

/// The persistent variant keeps the state dir and the home directory on
/// its own claim, and passes the home into the workspace.
#[test]
fn pvc_variant_keeps_state_and_home_on_its_claim() {
    let bin = require!(validator());
    let file = deploy_file("workspace-pod-pvc.yaml");
    assert!(
        manifests().contains(&file),
        "the variant is not among the validated manifests"
    );
    assert!(validate(&bin, &file).status.success());
    let docs = load_all(&file);
    let claim = docs
        .iter()
        .find(|d| d["kind"] == "PersistentVolumeClaim")
        .expect("no PersistentVolumeClaim in the variant");
    let pod = load(&file);
    let spec = pod_spec(&pod);
    let c = &spec["containers"][0];
    for path in ["/run/cvmd", "/home/coder"] {
        let v = volume(spec, mount(c, path)["name"].as_str().unwrap());
        assert_eq!(
            v["persistentVolumeClaim"]["claimName"], claim["metadata"]["name"],
            "{path} is not on the claim"
        );
    }
    let mounts = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CVMD_MOUNTS")
        .expect("CVMD_MOUNTS is not set");
    assert!(
        mounts["value"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|m| m.starts_with("/home/coder:")),
        "{mounts}"
    );
}

/// `cvmd shiftfs install` finds the source the outer image ships: its
/// default path is where the Dockerfile puts it, and no volume of the
/// workspace pods is mounted over it.
#[test]
fn the_shiftfs_source_is_not_hidden_by_a_pod_mount() {
    require!(validator());
    let default = cvmd::config::SETTINGS
        .iter()
        .find(|s| s.key == "shiftfs_src")
        .and_then(|s| s.default)
        .unwrap();
    let dockerfile = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("images/outer/Dockerfile"),
    )
    .unwrap();
    let clone = dockerfile
        .lines()
        .find(|l| l.contains("git clone") && l.contains("SHIFTFS_REPO"))
        .expect("the Dockerfile does not clone shiftfs");
    assert!(
        clone.contains(&format!(" {default};")),
        "the Dockerfile's shiftfs source is not at {default}: {clone}"
    );
    for name in POD_FILES {
        let doc = load(&deploy_file(name));
        for m in pod_spec(&doc)["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
        {
            let at = Path::new(m["mountPath"].as_str().unwrap());
            assert!(
                !Path::new(default).starts_with(at),
                "{name}: {} is mounted over the shiftfs source {default}",
                at.display()
            );
        }
    }
}

/// The persistent variant differs from the plain pod only in where the
/// state lives: the container's probes, security context, termination
/// policy and the pod's scheduling and grace period are the same, so a
/// change to one manifest is made in both.
#[test]
fn pvc_variant_matches_the_workspace_pod_outside_the_state() {
    require!(validator());
    let plain = load(&deploy_file("workspace-pod.yaml"));
    let pvc = load(&deploy_file("workspace-pod-pvc.yaml"));
    let (a, b) = (pod_spec(&plain), pod_spec(&pvc));
    for key in [
        "terminationGracePeriodSeconds",
        "restartPolicy",
        "automountServiceAccountToken",
        "nodeSelector",
        "tolerations",
    ] {
        assert_eq!(a[key], b[key], "spec.{key} differs");
    }
    let (ca, cb) = (&a["containers"][0], &b["containers"][0]);
    for key in [
        "image",
        "securityContext",
        "terminationMessagePolicy",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
    ] {
        assert_eq!(ca[key], cb[key], "the container's {key} differs");
    }
    // Every variable of the plain pod is in the variant, with its value.
    for e in ca["env"].as_array().unwrap() {
        assert!(
            cb["env"].as_array().unwrap().contains(e),
            "the variant lacks {e}"
        );
    }
}
