//! What runs in the workspace: `/sbin/init` when the image has one,
//! otherwise the image's Entrypoint + Cmd, otherwise a keep-alive shell;
//! with which environment, working dir, user and stop signal.

use super::env::{drop_bad_sysbox_env, SYSBOX_KNOBS};
use super::init_flavor::{self, InitFlavor};
use super::signal::parse_signal;
use super::user::ResolvedUser;
use super::{BundleError, RuntimeFlavor, INIT_PATH};

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

/// Decides args, env, cwd and stop signal. `init` is the flavour of the
/// init that boots, if one does; `user` is already resolved (see
/// [`user_value`]); `passthrough` comes from [`super::passthrough_env`].
#[allow(clippy::too_many_arguments)]
pub fn plan(
    image_name: &str,
    image: &ImageRun,
    ov: &Overrides,
    flavor: RuntimeFlavor,
    init_flavor: Option<InitFlavor>,
    has_sh: bool,
    user: ResolvedUser,
    passthrough: &[(String, String)],
) -> Result<ProcessPlan, BundleError> {
    let init = init_flavor.is_some();
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
    let image_signal = match &image.stop_signal {
        Some(s) => Some(parse_signal(s).ok_or_else(|| BundleError::BadStopSignal {
            image: image_name.into(),
            value: s.clone(),
        })?),
        None => None,
    };
    let stop_signal = init_flavor::stop_signal(init_flavor, image_signal);
    Ok(ProcessPlan {
        init,
        args,
        env,
        cwd,
        user,
        stop_signal,
    })
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
        let init = init.then_some(InitFlavor::Systemd);
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
            Some(InitFlavor::Systemd),
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
        let img = ImageRun {
            env: vec!["SYSBOX_BAD=1".into()],
            ..image()
        };
        let p = plan(
            "i",
            &img,
            &Overrides::default(),
            RuntimeFlavor::Sysbox,
            None,
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
        let busybox = plan(
            "i",
            &image(),
            &Overrides::default(),
            RuntimeFlavor::Runc,
            Some(InitFlavor::Busybox),
            true,
            bob(),
            &[],
        )
        .unwrap();
        assert_eq!(busybox.stop_signal, libc::SIGUSR2, "busybox's poweroff");
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
    fn passthrough_wins_over_the_image() {
        let got = vec![("NVIDIA_VISIBLE_DEVICES".to_string(), "all".to_string())];
        // Passthrough replaces the image's value of the same name.
        let p = plan(
            "i",
            &image(),
            &Overrides::default(),
            RuntimeFlavor::Runc,
            None,
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
            None,
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
