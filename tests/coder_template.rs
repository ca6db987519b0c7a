//! The Coder template (deploy/coder/main.tf), parsed by a real HCL parser
//! (hcl-rs): every variable it sets on cvmd's container is a setting cvmd
//! defines (src/config.rs), the agent starts through
//! CVMD_BOOTSTRAP_SCRIPT, the writable layer is on the template's PVC, and
//! the pod mounts what deploy/kubernetes/workspace-pod.yaml does.

use std::path::Path;

use hcl::{Block, Body, Expression};

fn template() -> Body {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/coder/main.tf");
    let text = std::fs::read_to_string(&path).unwrap();
    hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every block named `name` anywhere below `body`, including the content
/// of `dynamic "name"` blocks.
fn blocks<'a>(body: &'a Body, name: &str, out: &mut Vec<&'a Body>) {
    for b in body.blocks() {
        let dynamic =
            b.identifier() == "dynamic" && b.labels().first().is_some_and(|l| l.as_str() == name);
        if b.identifier() == name {
            out.push(b.body());
        } else if dynamic {
            out.extend(
                b.body()
                    .blocks()
                    .filter(|c| c.identifier() == "content")
                    .map(Block::body),
            );
        }
        blocks(b.body(), name, out);
    }
}

fn string_attr(body: &Body, key: &str) -> Option<String> {
    body.attributes()
        .find(|a| a.key() == key)
        .and_then(|a| match a.expr() {
            Expression::String(s) => Some(s.clone()),
            _ => None,
        })
}

fn resource<'a>(body: &'a Body, kind: &str) -> &'a Body {
    body.blocks()
        .find(|b| {
            b.identifier() == "resource" && b.labels().first().is_some_and(|l| l.as_str() == kind)
        })
        .map(Block::body)
        .unwrap_or_else(|| panic!("no resource {kind}"))
}

#[test]
fn coder_template_sets_only_cvmd_settings_and_boots_the_agent() {
    let body = template();
    let pod = resource(&body, "kubernetes_pod");
    let mut envs = Vec::new();
    blocks(pod, "env", &mut envs);
    let names: Vec<String> = envs
        .iter()
        .map(|e| string_attr(e, "name").expect("env name is a literal"))
        .collect();
    for n in &names {
        assert!(
            cvmd::config::SETTINGS.iter().any(|s| s.env == n.as_str()),
            "{n} is not a cvmd setting (src/config.rs)"
        );
    }
    for want in [
        "CVMD_IMAGE",
        "CVMD_WORKSPACE",
        "CVMD_BOOTSTRAP_SCRIPT",
        "CVMD_CPUS",
        "CVMD_MEMORY",
        "CVMD_ADD_GPU",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not set: {names:?}");
    }

    // The pod's mounts: the shared cache, sysbox's disk, the state on the
    // template's own PVC, the node's modules and headers.
    let mut mounts = Vec::new();
    blocks(pod, "volume_mount", &mut mounts);
    let paths: Vec<String> = mounts
        .iter()
        .filter_map(|m| string_attr(m, "mount_path"))
        .collect();
    for want in [
        "/var/lib/cvmd",
        "/var/lib/sysbox",
        "/run/cvmd",
        "/lib/modules",
        "/usr/src",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} not mounted: {paths:?}"
        );
    }
    let mut volumes = Vec::new();
    blocks(pod, "volume", &mut volumes);
    let state = volumes
        .iter()
        .find(|v| string_attr(v, "name").as_deref() == Some("state"))
        .expect("a state volume");
    assert!(
        state
            .blocks()
            .any(|b| b.identifier() == "persistent_volume_claim"),
        "the writable layer is on the PVC"
    );
    resource(&body, "kubernetes_persistent_volume_claim");

    // Probes as in the pod template.
    let mut probes = Vec::new();
    blocks(pod, "liveness_probe", &mut probes);
    blocks(pod, "readiness_probe", &mut probes);
    assert_eq!(probes.len(), 2, "a liveness and a readiness probe");
}
