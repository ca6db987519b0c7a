//! The per-cloud guides in `deploy/clusters/`: the eksctl config parses and
//! carries the fields the guide's requirements rest on (no eksctl schema is
//! published to a registry we reach, so the fields that matter are checked
//! here), the GKE and AKS scripts are valid bash asking for Ubuntu nodes,
//! and every preflight check the requirement table names is one that
//! `cvmd preflight` really runs, so a failing check leads back to its line.

use crate::common::prereq::Need;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/clusters")
}

fn venv_python() -> Need<PathBuf> {
    let venv = std::env::var_os("CVMD_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/cvmd-tools/venv"));
    let py = venv.join("bin/python3");
    if py.exists() {
        Ok(py)
    } else {
        Err(format!(
            "{} is missing (scripts/deps.sh installs it with PyYAML)",
            py.display()
        ))
    }
}

#[test]
fn eksctl_nodegroup_asks_for_ubuntu_nodes_with_local_disk() {
    let py = require!(venv_python());
    let file = dir().join("eks-nodegroup.yaml");
    let out = Command::new(py)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["apiVersion"], "eksctl.io/v1alpha5");
    assert_eq!(doc["kind"], "ClusterConfig");
    assert!(doc["metadata"]["name"].is_string() && doc["metadata"]["region"].is_string());
    let groups = doc["nodeGroups"].as_array().expect("nodeGroups");
    assert!(!groups.is_empty());
    for g in groups {
        let family = g["amiFamily"].as_str().unwrap_or_default();
        assert!(
            family.starts_with("Ubuntu"),
            "{}: amiFamily {family}",
            g["name"]
        );
        assert!(g["instanceType"].is_string(), "{g}");
        assert!(g["volumeSize"].as_u64().unwrap_or(0) >= 100, "{g}");
        assert_eq!(g["labels"]["cvmd.dev/workspaces"], "true", "{g}");
        assert_eq!(g["taints"][0]["key"], "cvmd.dev/workspaces", "{g}");
    }
}

#[test]
fn gke_and_aks_scripts_are_valid_bash_asking_for_ubuntu() {
    for (file, wants) in [
        ("gke-node-pool.sh", "--image-type UBUNTU_CONTAINERD"),
        ("aks-node-pool.sh", "--os-sku Ubuntu"),
    ] {
        let path = dir().join(file);
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(wants), "{file} lacks {wants}");
        assert!(
            text.contains("cvmd.dev/workspaces=true:NoSchedule"),
            "{file}"
        );
    }
}

#[test]
fn requirement_table_names_only_checks_preflight_runs() {
    let out = Command::new(crate::common::cvmd_bin())
        .args(["--runtime", "sysbox-runc", "preflight", "--json"])
        .env(
            "CVMD_CACHE_DIR",
            std::env::temp_dir().join("cvmd-guides-probe"),
        )
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("cvmd-guides-probe"));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let run: BTreeSet<String> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let guide = std::fs::read_to_string(dir().join("README.md")).unwrap();
    let mut named = BTreeSet::new();
    for row in guide.lines().filter(|l| l.starts_with("| ")) {
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap();
        for name in last.split('`').skip(1).step_by(2) {
            named.insert(name.to_string());
        }
    }
    let unknown: Vec<_> = named.difference(&run).collect();
    assert!(
        unknown.is_empty(),
        "the guide names checks preflight lacks: {unknown:?}"
    );
    let unmapped: Vec<_> = run.difference(&named).collect();
    assert!(
        unmapped.is_empty(),
        "checks no requirement of the guide points to: {unmapped:?}"
    );
}
