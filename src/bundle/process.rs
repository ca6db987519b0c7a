//! What runs in the workspace: `/sbin/init` when the image has one,
//! otherwise the image's Entrypoint + Cmd, otherwise a keep-alive shell;
//! with which environment, working dir, user and stop signal.

use std::collections::BTreeMap;

use super::user::ResolvedUser;
use super::{BundleError, RuntimeFlavor, INIT_PATH};

/// Glibc's SIGRTMIN: the kernel's 32 plus the two glibc keeps for itself.
/// Docker, sysbox and systemd's documentation all count from here, so
/// `SIGRTMIN+3` is 37 (systemd's "halt", what `kill 37` sends).
pub const SIGRTMIN: i32 = 34;
pub const SIGRTMAX: i32 = 64;
pub const SYSTEMD_STOP_SIGNAL: i32 = SIGRTMIN + 3;

/// What the image config says about running it (OCI image config `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRun {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
}

impl ImageRun {
    pub fn from_oci(config: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return ImageRun::default();
        };
        ImageRun {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
        }
    }
}

/// Settings that replace what the image says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces Entrypoint + Cmd (and /sbin/init, unless it is exactly it).
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
}

/// The process decision: [`plan`]'s result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    /// systemd (or another init) is PID 1.
    pub init: bool,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ResolvedUser,
    pub stop_signal: i32,
}

pub const KEEPALIVE: &str = "trap exit TERM; while :; do sleep 3600 & wait; done";
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which `User` value decides the process's user: the override, else the
/// image's; root for an init (`None` means root without a lookup).
pub fn user_value(image: &ImageRun, ov: &Overrides, init: bool) -> Option<String> {
    if init {
        return None;
    }
    ov.user.clone().or_else(|| image.user.clone())
}

/// Whether the workspace boots an init, given what the rootfs holds.
pub fn boots_init(ov: &Overrides, init_present: bool) -> bool {
    match &ov.command {
        Some(cmd) => cmd.len() == 1 && cmd[0] == INIT_PATH,
        None => init_present,
    }
}

/// Decides args, env, cwd and stop signal. `user` is already resolved
/// (see [`user_value`]); `passthrough` comes from [`passthrough_env`].
#[allow(clippy::too_many_arguments)]
pub fn plan(
    image_name: &str,
    image: &ImageRun,
    ov: &Overrides,
    flavor: RuntimeFlavor,
    init: bool,
    has_sh: bool,
    user: ResolvedUser,
    passthrough: &[(String, String)],
) -> Result<ProcessPlan, BundleError> {
    let args = if init {
        // Literal: sysbox recognises systemd by args[0] == "/sbin/init" only.
        vec![INIT_PATH.to_string()]
    } else if let Some(cmd) = ov.command.clone().filter(|c| !c.is_empty()) {
        cmd
    } else {
        let args: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
        if !args.is_empty() {
            args
        } else if has_sh {
            vec!["/bin/sh".into(), "-c".into(), KEEPALIVE.into()]
        } else {
            return Err(BundleError::NothingToRun {
                image: image_name.into(),
            });
        }
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    };
    for entry in &image.env {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    for (k, v) in passthrough {
        set(k, v);
    }
    if init && flavor == RuntimeFlavor::Runc {
        // systemd adapts to a container when $container is set
        // (systemd.io/CONTAINER_INTERFACE); sysbox sets its own value.
        set("container", "oci");
    }
    let mut env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if flavor == RuntimeFlavor::Sysbox {
        let dropped = drop_bad_sysbox_env(&mut env);
        if !dropped.is_empty() {
            tracing::warn!(image = image_name, dropped = ?dropped,
                "dropping SYSBOX_* variables sysbox-runc would refuse (it knows {:?})", SYSBOX_KNOBS);
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let cwd = ov
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    // A relative WorkingDir is taken from `/`, as Docker does.
    let cwd = if cwd.starts_with('/') {
        cwd
    } else {
        format!("/{cwd}")
    };
    let stop_signal = match &image.stop_signal {
        Some(s) => parse_signal(s).ok_or_else(|| BundleError::BadStopSignal {
            image: image_name.into(),
            value: s.clone(),
        })?,
        None if init => SYSTEMD_STOP_SIGNAL,
        None => libc::SIGTERM,
    };
    Ok(ProcessPlan {
        init,
        args,
        env,
        cwd,
        user,
        stop_signal,
    })
}

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

/// A signal by name (`SIGTERM`, `TERM`, `SIGRTMIN+3`, `RTMAX-1`, any case)
/// or number (1-64).
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = if rest.is_empty() {
            base
        } else if let Some(d) = rest.strip_prefix('+') {
            base + d.parse::<i32>().ok()?
        } else if let Some(d) = rest.strip_prefix('-') {
            base - d.parse::<i32>().ok()?
        } else {
            return None;
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest);
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
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

    fn image() -> ImageRun {
        ImageRun {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["arg".into()],
            env: vec!["PATH=/img/bin".into(), "A=1".into(), "NVIDIA_X=img".into()],
            working_dir: Some("/work".into()),
            user: Some("bob".into()),
            stop_signal: None,
        }
    }

    fn bob() -> ResolvedUser {
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            home: "/home/bob".into(),
            name: Some("bob".into()),
        }
    }

    fn go(
        img: &ImageRun,
        ov: &Overrides,
        init: bool,
        sh: bool,
    ) -> Result<ProcessPlan, BundleError> {
        plan("img", img, ov, RuntimeFlavor::Runc, init, sh, bob(), &[])
    }

    #[test]
    fn init_runs_the_literal_path_with_container_env() {
        let p = go(&image(), &Overrides::default(), true, true).unwrap();
        assert_eq!(p.args, vec!["/sbin/init"]);
        assert_eq!(p.stop_signal, 37);
        assert!(p.env.contains(&"container=oci".to_string()));
        assert!(p.env.contains(&"PATH=/img/bin".to_string()));
        let s = plan(
            "i",
            &image(),
            &Overrides::default(),
            RuntimeFlavor::Sysbox,
            true,
            true,
            bob(),
            &[],
        )
        .unwrap();
        assert!(!s.env.iter().any(|e| e.starts_with("container=")));
        assert_eq!(user_value(&image(), &Overrides::default(), true), None);
    }

    #[test]
    fn entrypoint_cmd_env_cwd() {
        let p = go(&image(), &Overrides::default(), false, true).unwrap();
        assert_eq!(p.args, vec!["/entry", "arg"]);
        assert_eq!(p.cwd, "/work");
        assert_eq!(p.stop_signal, libc::SIGTERM);
        assert!(p.env.contains(&"HOME=/home/bob".to_string()));
        assert!(!p.env.iter().any(|e| e.starts_with("container=")));
        assert_eq!(
            user_value(&image(), &Overrides::default(), false).as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn overrides_win() {
        let ov = Overrides {
            command: Some(vec!["/bin/bash".into()]),
            user: Some("0".into()),
            working_dir: Some("rel".into()),
            hostname: None,
        };
        let p = go(&image(), &ov, boots_init(&ov, true), true).unwrap();
        assert!(!p.init);
        assert_eq!(p.args, vec!["/bin/bash"]);
        assert_eq!(p.cwd, "/rel");
        assert_eq!(user_value(&image(), &ov, false).as_deref(), Some("0"));
        let ov = Overrides {
            command: Some(vec!["/sbin/init".into()]),
            ..Overrides::default()
        };
        assert!(boots_init(&ov, false));
    }

    #[test]
    fn keepalive_or_nothing() {
        let img = ImageRun::default();
        let p = go(&img, &Overrides::default(), false, true).unwrap();
        assert_eq!(p.args, vec!["/bin/sh", "-c", KEEPALIVE]);
        assert!(p.env[0].starts_with("PATH=/usr/local/sbin"));
        let e = go(&img, &Overrides::default(), false, false).unwrap_err();
        assert!(e.to_string().contains("nothing to run"), "{e}");
    }

    #[test]
    fn sysbox_env_knobs() {
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
        assert_eq!(dropped.len(), 3);
        let img = ImageRun {
            env: vec!["SYSBOX_BAD=1".into()],
            ..image()
        };
        let p = plan(
            "i",
            &img,
            &Overrides::default(),
            RuntimeFlavor::Sysbox,
            false,
            true,
            bob(),
            &[],
        )
        .unwrap();
        assert!(!p.env.iter().any(|e| e.starts_with("SYSBOX_")));
        let p = go(&img, &Overrides::default(), false, true).unwrap();
        assert!(p.env.contains(&"SYSBOX_BAD=1".to_string()));
    }

    #[test]
    fn stop_signals() {
        for (s, n) in [
            ("SIGTERM", 15),
            ("TERM", 15),
            ("sigkill", 9),
            ("SIGRTMIN+3", 37),
            ("RTMIN", 34),
            ("SIGRTMAX-2", 62),
            ("37", 37),
            ("SIGWINCH", 28),
        ] {
            assert_eq!(parse_signal(s), Some(n), "{s}");
        }
        for s in ["", "0", "65", "SIGNOPE", "SIGRTMIN+31", "RTMIN3", "-1"] {
            assert_eq!(parse_signal(s), None, "{s}");
        }
        let img = ImageRun {
            stop_signal: Some("SIGUSR1".into()),
            ..image()
        };
        assert_eq!(
            go(&img, &Overrides::default(), true, true)
                .unwrap()
                .stop_signal,
            10
        );
        let img = ImageRun {
            stop_signal: Some("BOGUS".into()),
            ..image()
        };
        assert!(matches!(
            go(&img, &Overrides::default(), false, true),
            Err(BundleError::BadStopSignal { .. })
        ));
    }

    #[test]
    fn env_wildcards_and_secrets() {
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
        assert!(all
            .iter()
            .all(|(k, _)| !k.starts_with("CVMD_") && !k.starts_with("CODER_")));
        // Passthrough replaces the image's value of the same name.
        let p = plan(
            "i",
            &image(),
            &Overrides::default(),
            RuntimeFlavor::Runc,
            false,
            true,
            bob(),
            &got,
        )
        .unwrap();
        assert!(p.env.contains(&"NVIDIA_VISIBLE_DEVICES=all".to_string()));
        assert!(p.env.contains(&"NVIDIA_X=img".to_string()));
        let over = vec![("A".to_string(), "outer".to_string())];
        let p = plan(
            "i",
            &image(),
            &Overrides::default(),
            RuntimeFlavor::Runc,
            false,
            true,
            bob(),
            &over,
        )
        .unwrap();
        assert_eq!(
            p.env
                .iter()
                .filter(|e| e.starts_with("A="))
                .collect::<Vec<_>>(),
            vec!["A=outer"]
        );
    }
}
