use super::*;

fn resolve(argv: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let cmd = clap::Command::new("cvmd").args(args());
    let matches = cmd
        .try_get_matches_from(std::iter::once("cvmd").chain(argv.iter().copied()))
        .unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::resolve(&matches, &|k| env.get(k).cloned())
}

#[test]
fn the_default_id_mapping_is_the_workspaces_own_range_under_every_runtime() {
    for runtime in ["runc", "sysbox-runc", "/usr/bin/runc"] {
        let s = resolve(&["--runtime", runtime], &[]).unwrap();
        assert_eq!(s.run.rootfs.idmap, IdMapSetting::Auto, "{runtime}");
        assert!(!s.run.rootfs.idmap.host_userns());
    }
}

#[test]
fn none_under_runc_is_refused_naming_the_unsafe_setting() {
    let e = resolve(&["--runtime", "runc"], &[("CVMD_IDMAP", "none")]).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("invalid CVMD_IDMAP"), "{text}");
    assert!(
        text.contains("node's root") && text.contains(crate::idmap::HOST_UNSAFE),
        "{text}"
    );
    // sysbox-runc allocates a mapping itself: its contract.
    let s = resolve(&["--runtime", "sysbox-runc", "--idmap", "none"], &[]).unwrap();
    assert_eq!(s.run.rootfs.idmap, IdMapSetting::None);
}

#[test]
fn the_host_user_namespace_only_by_its_unsafe_name_and_only_under_runc() {
    let s = resolve(&["--runtime", "runc", "--idmap", "host-unsafe"], &[]).unwrap();
    assert!(s.run.rootfs.idmap.host_userns());
    let e = resolve(&["--runtime", "sysbox-runc", "--idmap", "host-unsafe"], &[]).unwrap_err();
    assert!(e.to_string().contains("runc only"), "{e}");
}

#[test]
fn defaults_apply() {
    let s = resolve(&[], &[]).unwrap();
    assert_eq!(s.run.pull.cache_dir, PathBuf::from("/var/lib/cvmd"));
    assert_eq!(s.run.pull.concurrency, 8);
    assert_eq!(
        s.run.pull.registry.docker_config,
        PathBuf::from("/root/.docker/config.json")
    );
    assert_eq!(s.run.pull.platform, Platform::host());
    assert_eq!(s.run.api.socket, PathBuf::from("/run/cvmd/cvmd.sock"));
    assert_eq!(s.run.api.admin_group, None);
    assert_eq!(s.run.backend.choice, crate::backend::Choice::Native);
    assert_eq!(
        s.run.backend.containerd.socket,
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(s.run.backend.containerd.namespace, "cvmd");
}

#[test]
fn the_socket_follows_the_state_dir_and_the_admin_group_must_exist() {
    let s = resolve(&[], &[("CVMD_STATE_DIR", "/tmp/x")]).unwrap();
    assert_eq!(s.run.api.socket, PathBuf::from("/tmp/x/cvmd.sock"));
    let e = resolve(&[], &[("CVMD_ADMIN_GROUP", "no-such-group-cvmd")]).unwrap_err();
    assert!(e.problems[0].contains("CVMD_ADMIN_GROUP"), "{e}");
    let s = resolve(&[], &[("CVMD_ADMIN_GROUP", "4242")]).unwrap();
    assert_eq!(s.run.api.admin_group.as_deref(), Some("4242"));
}

#[test]
fn flag_beats_cvmd_env_beats_envbox_alias() {
    let env = [("CVMD_IMAGE", "a:1"), ("CODER_INNER_IMAGE", "b:1")];
    assert_eq!(
        resolve(&[], &env).unwrap().run.image.as_deref(),
        Some("a:1")
    );
    assert_eq!(
        resolve(&[], &env[1..]).unwrap().run.image.as_deref(),
        Some("b:1")
    );
    assert_eq!(
        resolve(&["--image", "c:1"], &env)
            .unwrap()
            .run
            .image
            .as_deref(),
        Some("c:1")
    );
}

#[test]
fn file_values_are_below_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cvmd.toml");
    std::fs::write(
        &path,
        "image = \"f:1\"\ninsecure_registries = [\"a:5000\", \"b\"]\npull_concurrency = 6\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let s = resolve(&["--config", p], &[]).unwrap();
    assert_eq!(s.run.image.as_deref(), Some("f:1"));
    assert_eq!(s.run.pull.registry.insecure_registries, ["a:5000", "b"]);
    assert_eq!(s.run.pull.concurrency, 6);
    let s = resolve(&[], &[("CVMD_CONFIG", p), ("CVMD_IMAGE", "e:1")]).unwrap();
    assert_eq!(s.run.image.as_deref(), Some("e:1"));
}

#[test]
fn every_bad_value_is_reported_once_with_its_origin() {
    let e = resolve(
        &["--pull-concurrency", "0"],
        &[
            ("CVMD_CACHE_DIR", "relative"),
            ("CODER_INNER_IMAGE", "Bad Image"),
            ("CVMD_MIRRORS", "nomirror"),
            ("CVMD_LOG_FORMAT", "xml"),
        ],
    )
    .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.problems.len(), 5, "{text}");
    assert!(
        text.contains("invalid --pull-concurrency: \"0\" is not a whole number from 1 to 64"),
        "{text}"
    );
    assert!(
        text.contains("invalid CVMD_CACHE_DIR: \"relative\" is not an absolute path"),
        "{text}"
    );
    assert!(text.contains("invalid CODER_INNER_IMAGE"), "{text}");
    assert!(
        text.contains("\"nomirror\" is not REGISTRY=MIRROR"),
        "{text}"
    );
}

#[test]
fn unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "imagee = \"x\"\n").unwrap();
    let e = resolve(&["--config", path.to_str().unwrap()], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown setting \"imagee\""), "{e}");
}

#[test]
fn sizes_take_binary_units() {
    assert_eq!(parse_size("123"), Ok(123));
    assert_eq!(parse_size("10MiB"), Ok(10 << 20));
    assert_eq!(parse_size("64G"), Ok(64 << 30));
    assert!(parse_size("1.5GiB").is_err());
    assert!(parse_size("99999999999TiB").is_err());
    assert!(parse_size("").is_err());
}

#[test]
fn mirrors_keep_their_order() {
    let s = resolve(
        &[],
        &[(
            "CVMD_MIRRORS",
            "docker.io=m1:5000, docker.io=https://m2,quay.io=m3",
        )],
    )
    .unwrap();
    assert_eq!(
        s.run.pull.registry.mirrors["docker.io"],
        ["m1:5000", "https://m2"]
    );
    assert_eq!(s.run.pull.registry.mirrors["quay.io"], ["m3"]);
}

#[test]
fn network_settings_resolve_and_report_bad_values() {
    let s = resolve(&[], &[]).unwrap();
    assert_eq!(s.run.network.mode(), crate::network::Mode::Veth);
    assert_eq!(s.run.network.subnet.to_string(), "172.19.0.0/30");
    let s = resolve(
        &["--network", "veth", "--mtu", "1400"],
        &[("CVMD_SUBNET", "10.1.0.0/29"), ("CVMD_PORTS", "8080:80")],
    )
    .unwrap();
    assert_eq!(s.run.network.mode(), crate::network::Mode::Veth);
    assert_eq!(s.run.network.mtu, Some(1400));
    assert_eq!(s.run.network.subnet.inner().to_string(), "10.1.0.2");
    assert_eq!(s.run.network.ports.len(), 1);
    let e = resolve(
        &["--subnet", "10.1.0.0/31", "--ports", "80:0"],
        &[("CVMD_NETWORK", "host")],
    )
    .unwrap_err();
    assert_eq!(e.problems.len(), 3, "{e}");
    assert!(
        e.to_string()
            .contains("invalid CVMD_NETWORK: \"host\" is not one of veth, none"),
        "{e}"
    );
    let e = resolve(&["--network", "none", "--ports", "80"], &[]).unwrap_err();
    assert!(e.to_string().contains("need network veth"), "{e}");
}

#[test]
fn every_setting_has_a_flag_and_an_env_var() {
    let help = clap::Command::new("cvmd")
        .args(args())
        .render_long_help()
        .to_string();
    for s in SETTINGS {
        assert!(help.contains(s.env), "{}", s.env);
        assert!(
            help.contains(&format!("--{}", s.key.replace('_', "-"))),
            "{}",
            s.key
        );
        if let Some(a) = s.envbox {
            assert!(help.contains(a), "{a}");
        }
    }
}
