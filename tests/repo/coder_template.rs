//! The Coder template in `deploy/coder/` parses as HCL (python-hcl2,
//! installed pinned in the tools venv by `scripts/deps.sh`: a well-kept
//! parser of Terraform's syntax, so no Terraform or provider download is
//! needed here), and says what cvmd understands: every `CVMD_*` or
//! `CODER_*` variable its pod sets is a cvmd setting, its literal values
//! are ones cvmd accepts, and the agent starts through the bootstrap
//! script.

use crate::common::prereq::Need;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn python() -> Need<PathBuf> {
    let venv = std::env::var_os("CVMD_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/cvmd-tools/venv"));
    let py = venv.join("bin/python3");
    let has_hcl2 = Command::new(&py)
        .args(["-c", "import hcl2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_hcl2 {
        Ok(py)
    } else {
        Err(format!(
            "python-hcl2 is missing from {} (scripts/deps.sh installs it)",
            py.display()
        ))
    }
}

fn template_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/coder");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf files in {}", dir.display());
    files
}

/// The file parsed by python-hcl2, as JSON; Err with the parser's words.
fn parse(py: &Path, file: &Path) -> Result<Value, String> {
    let out = Command::new(py)
        .args([
            "-c",
            "import hcl2, json, sys; print(json.dumps(hcl2.load(open(sys.argv[1]))))",
        ])
        .arg(file)
        .output()
        .expect("run python3");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// python-hcl2 keeps a string literal's quotes; interpolations start `${`.
fn literal(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|s| !s.contains("${"))
        .map(str::to_string)
}

/// Every `env` block anywhere in the document: (name, literal value).
fn env_blocks(v: &Value, out: &mut Vec<(String, Option<String>)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "env" {
                    for e in child.as_array().into_iter().flatten() {
                        let name = literal(&e["name"])
                            .unwrap_or_else(|| panic!("an env name is not a literal: {e}"));
                        out.push((name, e.get("value").and_then(literal)));
                    }
                } else {
                    env_blocks(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| env_blocks(i, out)),
        _ => {}
    }
}

fn template() -> Need<Value> {
    let py = python()?;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/coder/main.tf");
    Ok(parse(&py, &file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
}

#[test]
fn coder_template_parses_as_hcl() {
    let py = require!(python());
    for file in template_files() {
        if let Err(e) = parse(&py, &file) {
            panic!("{} does not parse:\n{e}", file.display());
        }
    }
}

/// The parser is not a no-op: a missing closing brace fails it.
#[test]
fn hcl_parser_rejects_a_broken_template() {
    let py = require!(python());
    let dir = tempfile::tempdir().unwrap();
    let main =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/coder/main.tf"))
            .unwrap();
    let cut = main.trim_end().strip_suffix('}').unwrap();
    let file = dir.path().join("broken.tf");
    std::fs::write(&file, cut).unwrap();
    assert!(parse(&py, &file).is_err(), "a truncated template parsed");
}

/// Every `CVMD_*`/`CODER_*` variable the template's pod sets is a cvmd
/// setting, and cvmd accepts every literal value among them.
#[test]
fn coder_template_env_vars_are_real_cvmd_settings() {
    let doc = require!(template());
    let mut env = Vec::new();
    env_blocks(&doc, &mut env);
    assert!(env.len() >= 5, "found only {env:?}");
    let mut literals = Vec::new();
    for (name, value) in &env {
        if !name.starts_with("CVMD_") && !name.starts_with("CODER_") {
            continue;
        }
        assert!(
            cvmd::config::SETTINGS
                .iter()
                .any(|s| s.env == name || s.envbox == Some(name.as_str())),
            "deploy/coder/main.tf: {name} is not a cvmd setting"
        );
        if let Some(v) = value {
            literals.push((name.clone(), v.clone()));
        }
    }
    let cmd = clap::Command::new("cvmd").args(cvmd::config::args());
    let matches = cmd.try_get_matches_from(["cvmd"]).unwrap();
    let lookup = |k: &str| {
        literals
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    if let Err(e) = cvmd::config::Settings::resolve(&matches, &lookup) {
        panic!("deploy/coder/main.tf: cvmd refuses the values: {e}");
    }
}

/// What kubernetes-envbox does, with cvmd: the Coder agent starts from the
/// bootstrap script (its init script and token), the pod's CPU, memory and
/// GPUs come from workspace parameters, and the state is on a claim.
#[test]
fn coder_template_starts_the_agent_and_takes_its_resources_from_parameters() {
    let doc = require!(template());
    let text = doc.to_string();
    let mut env = Vec::new();
    env_blocks(&doc, &mut env);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    for name in [
        "CVMD_IMAGE",
        "CVMD_BOOTSTRAP_SCRIPT",
        "CVMD_CPUS",
        "CVMD_MEMORY",
        "CVMD_ADD_GPU",
    ] {
        assert!(names.contains(&name), "{name} is not set: {names:?}");
    }
    for needle in [
        "coder_agent.main.init_script",
        "coder_agent.main.token",
        "kubernetes_persistent_volume_claim_v1",
        "nvidia.com/gpu",
    ] {
        assert!(text.contains(needle), "the template never uses {needle}");
    }
    let params: Vec<String> = doc["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.get("\"coder_parameter\""))
        .flat_map(|p| p.as_object().unwrap().keys().cloned())
        .collect();
    for p in ["cpu", "memory", "gpu"] {
        assert!(
            params.contains(&format!("\"{p}\"")),
            "no coder_parameter {p}: {params:?}"
        );
    }
}

/// The template's pod mounts what the persistent pod manifest
/// (`deploy/kubernetes/workspace-pod-pvc.yaml`, validated against the
/// Kubernetes schemas) mounts, at the same paths.
#[test]
fn coder_template_mounts_what_the_pvc_manifest_mounts() {
    let doc = require!(template());
    let py = python().unwrap();
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/workspace-pod-pvc.yaml");
    // PyYAML comes with kubernetes-validate in the same venv.
    let out = Command::new(&py)
        .args([
            "-c",
            "import json, sys, yaml\n\
             pod = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d['kind'] == 'Pod'][0]\n\
             print(json.dumps(sorted(m['mountPath'] for m in pod['spec']['containers'][0]['volumeMounts'])))",
        ])
        .arg(&manifest)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The manifest mounts its pull secret as a file; the template passes
    // an optional Secret's key inline (CVMD_PULL_SECRET takes either), so
    // that a workspace of a public image needs no Secret at all.
    let want: Vec<String> = serde_json::from_slice::<Vec<String>>(&out.stdout)
        .unwrap()
        .into_iter()
        .filter(|p| !p.starts_with("/var/run/secrets/"))
        .collect();
    let mut got = Vec::new();
    mount_paths(&doc, &mut got);
    got.sort();
    assert_eq!(
        got, want,
        "the template's mounts differ from the manifest's"
    );
}

fn mount_paths(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "volume_mount" {
                    for m in child.as_array().into_iter().flatten() {
                        out.push(literal(&m["mount_path"]).unwrap());
                    }
                } else {
                    mount_paths(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| mount_paths(i, out)),
        _ => {}
    }
}
