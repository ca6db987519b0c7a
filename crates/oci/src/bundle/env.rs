//! The environment the workspace may see from outside: variables passed
//! through by name or prefix (never cvmd's own settings and secrets), and
//! the `SYSBOX_*` knobs sysbox-runc accepts.

use std::collections::BTreeMap;

/// The per-container knobs sysbox-runc accepts as `SYSBOX_*` variables
/// (sysbox-runc `getSysboxEnvVarConfigs`, v0.6-0.7); any other `SYSBOX_*`
/// name, a boolean knob not `TRUE`/`FALSE`, or a value holding `=` makes
/// it refuse the container. `true` marks the boolean ones.
pub const SYSBOX_KNOBS: &[(&str, bool)] = &[
    ("SYSBOX_IGNORE_SYSFS_CHOWN", true),
    ("SYSBOX_ALLOW_TRUSTED_XATTR", true),
    ("SYSBOX_HONOR_CAPS", true),
    ("SYSBOX_SYSCONT_MODE", true),
    ("SYSBOX_SKIP_UID_SHIFT", false),
];

/// Whether sysbox-runc accepts this `NAME=VALUE` entry.
pub fn sysbox_accepts(entry: &str) -> bool {
    if !entry.starts_with("SYSBOX_") {
        return true;
    }
    let Some((name, value)) = entry.split_once('=') else {
        return false;
    };
    match SYSBOX_KNOBS.iter().find(|(k, _)| *k == name) {
        None => false,
        Some(_) if value.contains('=') => false,
        Some((_, true)) => value == "TRUE" || value == "FALSE",
        Some((_, false)) => true,
    }
}

/// Removes the entries sysbox-runc would refuse; returns their names.
pub fn drop_bad_sysbox_env(env: &mut Vec<String>) -> Vec<String> {
    let mut dropped = Vec::new();
    env.retain(|e| {
        let ok = sysbox_accepts(e);
        if !ok {
            dropped.push(e.split('=').next().unwrap_or(e).to_string());
        }
        ok
    });
    dropped
}

/// Names that never pass through, whatever the patterns say: cvmd's and
/// envbox's own settings, which hold the pull secret and other credentials.
const NEVER_PASS: &[&str] = &["CVMD_", "CODER_"];

/// The outer environment's variables whose names match a pattern: an exact
/// name, or a prefix ending in `*` (`NVIDIA_*`). Sorted by name.
pub fn passthrough_env(
    patterns: &[String],
    outer: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let matches = |name: &str| {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
    };
    outer
        .iter()
        .filter(|(k, _)| !NEVER_PASS.iter().any(|n| k.starts_with(n)))
        .filter(|(k, _)| !k.is_empty() && !k.contains('='))
        .filter(|(k, _)| matches(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysbox_knobs() {
        let mut env: Vec<String> = [
            "SYSBOX_HONOR_CAPS=TRUE",
            "SYSBOX_HONOR_CAPS=yes",
            "SYSBOX_FOO=1",
            "SYSBOX_SKIP_UID_SHIFT=/a,/b",
            "SYSBOX_SKIP_UID_SHIFT=a=b",
            "A=SYSBOX_X",
        ]
        .map(String::from)
        .to_vec();
        let dropped = drop_bad_sysbox_env(&mut env);
        assert_eq!(
            env,
            vec![
                "SYSBOX_HONOR_CAPS=TRUE",
                "SYSBOX_SKIP_UID_SHIFT=/a,/b",
                "A=SYSBOX_X"
            ]
        );
        assert_eq!(
            dropped,
            vec!["SYSBOX_HONOR_CAPS", "SYSBOX_FOO", "SYSBOX_SKIP_UID_SHIFT"]
        );
    }

    #[test]
    fn wildcards_and_secrets() {
        let outer: BTreeMap<String, String> = [
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("NVIDIA_DRIVER_CAPABILITIES", "compute"),
            ("LANG", "C.UTF-8"),
            ("LANGUAGE", "en"),
            ("CVMD_PULL_SECRET", "s3cret"),
            ("CODER_IMAGE_PULL_SECRET", "s3cret"),
            ("CODER_AGENT_TOKEN", "tok"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pats: Vec<String> = vec![
            "NVIDIA_*".into(),
            "LANG".into(),
            "CODER_*".into(),
            "CVMD_PULL_SECRET".into(),
        ];
        let got = passthrough_env(&pats, &outer);
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "LANG",
                "NVIDIA_DRIVER_CAPABILITIES",
                "NVIDIA_VISIBLE_DEVICES"
            ]
        );
        let all = passthrough_env(&["*".into()], &outer);
        assert_eq!(all.len(), 5);
        assert!(all
            .iter()
            .all(|(k, _)| !k.starts_with("CVMD_") && !k.starts_with("CODER_")));
    }
}
