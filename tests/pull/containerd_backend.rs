//! The containerd image backend end to end: a private Debian containerd
//! per test, the harness registry (plain and htpasswd over TLS), and
//! `cvmd run --image-backend containerd` booting a busybox workspace from
//! a containerd snapshot under real runc.
//!
//! The tests that `per_release!` names run against each of Debian's
//! containerd releases: 1.6 (bookworm), where cvmd fetches into the
//! content store, and 1.7 (trixie) and 2.x (sid), where containerd's
//! transfer service pulls and asks cvmd for credentials.
//!
//! Needs root, runc, containerd and docker-registry; skips with a reason
//! otherwise.

use crate::common::busybox::busybox_layer;
use crate::common::prereq::{self, Need};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::containerd::{containerd_present, PrivateContainerd, Release};
use crate::common::image::{Compression, Format, ImageBuilder, LayerBuilder};
use crate::common::layers::*;
use crate::common::Registry;
use base64::Engine as _;

fn ready() -> Need {
    can_run()?;
    prereq::runc()?;
    containerd_present()
}

fn ready_with(release: Release) -> Need {
    can_run()?;
    prereq::runc()?;
    release.present()
}

/// One test per containerd release, each calling `$body(release)`.
macro_rules! per_release {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn bookworm_1_6() {
                require!(ready_with(Release::Bookworm));
                $body(Release::Bookworm);
            }
            #[test]
            fn trixie_1_7() {
                require!(ready_with(Release::Trixie));
                $body(Release::Trixie);
            }
            #[test]
            fn sid_2() {
                require!(ready_with(Release::Sid));
                $body(Release::Sid);
            }
        }
    };
}

/// A registry for `release` to pull from through its transfer service
/// where it has one: containerd 1.7's speaks HTTPS only, so it gets a TLS
/// registry (and containerd trusts its CA, see `start_for`); the others
/// a plain one.
fn registry_for(release: Release) -> Registry {
    if release == Release::Trixie {
        Registry::start(crate::common::registry::RegistryOptions {
            tls: true,
            ..Default::default()
        })
        .unwrap()
    } else {
        Registry::plain().unwrap()
    }
}

/// containerd of `release`, trusting `reg`'s CA if it has one.
fn start_for(release: Release, reg: &Registry) -> PrivateContainerd {
    PrivateContainerd::start_trusting(release, reg.ca_pem_path())
}

/// `--insecure-registries` for cvmd: the registry's host if it is plain.
fn insecure(reg: &Registry) -> String {
    if reg.is_tls() {
        "none".into()
    } else {
        reg.host()
    }
}

/// Whether a pull from `reg` goes through `release`'s transfer service.
fn via_transfer(release: Release, reg: &Registry) -> bool {
    match release {
        Release::Bookworm => false,
        Release::Trixie => reg.is_tls(),
        Release::Sid => true,
    }
}

/// The log line that says which way the pull went.
fn pull_path_line(transfer: bool) -> &'static str {
    if transfer {
        "pulled by containerd's transfer service"
    } else {
        "pulled into containerd"
    }
}

/// busybox-static and a second layer on top, with `entrypoint`.
fn busybox_image(entrypoint: &[&str]) -> crate::common::image::Image {
    let layer = busybox_layer(&["sh", "sleep", "echo", "cat", "ls"]);
    let top =
        LayerBuilder::new()
            .dir("etc", 0o755)
            .file("etc/motd", b"from the second layer\n", 0o644);
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .layer(top.build(Compression::Gzip))
        .entrypoint(entrypoint)
        .build()
}

/// busybox-static under a layer of `mib` MiB of random bytes (`seed`): a
/// pull slow enough to watch through a throttled proxy.
fn busybox_and_random(mib: usize, seed: u64, entrypoint: &[&str]) -> crate::common::image::Image {
    ImageBuilder::new(Format::Oci)
        .layer(busybox_image(&[]).layers[0].clone())
        .layer(crate::common::image::Layer::random(
            "big.bin",
            mib,
            seed,
            Compression::Gzip,
        ))
        .entrypoint(entrypoint)
        .build()
}

/// `cvmd run` with the containerd backend against `ctd`.
fn cvmd_run(ctd: &PrivateContainerd, state: &Path, registry: &str, reference: &str) -> Command {
    let mut c = Command::new(crate::common::cvmd_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", state)
        .arg("--cache-dir")
        .arg(state.join("cache"))
        .arg("--state-dir")
        .arg(state.join("state"))
        .args(["--insecure-registries", registry])
        .args(["--image", reference, "--workspace", &workspace_name(state)])
        .env("CVMD_LOG_LEVEL", "info")
        .args(["--log-format", "text"])
        // In the host netns, in parallel: a veth each would collide.
        .args(["--network", "none"])
        .args(["--runtime", "runc", "--image-backend", "containerd"])
        .arg("--containerd-socket")
        .arg(ctd.socket())
        .stdin(Stdio::null());
    c
}

/// `cvmd run` in the background of `repo_tag` pulled through `proxy`, its
/// stderr piped.
fn run_through(
    proxy: &crate::common::proxy::FaultProxy,
    ctd: &PrivateContainerd,
    state: &Path,
    repo_tag: &str,
) -> std::process::Child {
    let reference = format!("{}/{repo_tag}", proxy.host());
    cvmd_run(ctd, state, &proxy.host(), &reference)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// No mount under the test's dirs, and containerd holds no workspace
/// snapshot and no lease of cvmd's.
fn assert_clean(state: &Path, ctd: &PrivateContainerd) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(state.to_str().unwrap()),
        "a mount under {} is left",
        state.display()
    );
    let snapshots = ctd.snapshots();
    assert!(
        !snapshots.iter().any(|s| s.starts_with("cvmd-")),
        "workspace or extract snapshots left: {snapshots:?}"
    );
    let leases = ctd.list(&["leases", "ls"]);
    assert!(leases.is_empty(), "leases left: {leases:?}");
}

per_release!(
    containerd_boots_a_workspace_from_a_snapshot_then_starts_warm_without_the_registry,
    boots_then_starts_warm
);
fn boots_then_starts_warm(release: Release) {
    let reg = registry_for(release);
    let ctd = start_for(release, &reg);
    let state = tempfile::tempdir().unwrap();
    let reference = push(
        &reg,
        "ctd/exit",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "cat /etc/motd; exit 7"]),
    );
    let out = cvmd_run(&ctd, state.path(), &insecure(&reg), &reference)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("cold start:\n{stderr}");
    assert_eq!(out.status.code(), Some(7), "{stderr}\n{}", ctd.log());
    assert!(stderr.contains("from the second layer"), "{stderr}");
    assert!(stderr.contains("image backend: containerd"), "{stderr}");
    assert!(
        stderr.contains("workspace layers from containerd snapshots"),
        "{stderr}"
    );
    assert!(
        stderr.contains(pull_path_line(via_transfer(release, &reg))),
        "{stderr}"
    );
    // Progress reads as with the registry backend, whichever way it went.
    assert!(
        stderr.contains(&format!("{reference}: sha256:")) && stderr.contains("2 layers"),
        "{stderr}"
    );
    // The image is containerd's now, with its layers as committed
    // snapshots, and its gc labels keep all of it through a full gc (a
    // lease deleted with --sync runs one) now that the pull's lease is gone.
    assert!(ctd
        .ctr(&["leases", "create", "--id", "gc-trigger"])
        .status
        .success());
    let gc = ctd.ctr(&["leases", "delete", "--sync", "gc-trigger"]);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_eq!(
        ctd.list(&["images", "ls"]),
        std::slice::from_ref(&reference)
    );
    let content = ctd.list(&["content", "ls"]);
    assert_eq!(content.len(), 4, "manifest, config, 2 layers: {content:?}");
    assert_eq!(ctd.snapshots().len(), 2, "{:?}", ctd.snapshots());
    assert_clean(state.path(), &ctd);
    // cvmd's own cache holds no image: containerd does. (The node's table
    // of workspace ID ranges lives there too, whatever the backend.)
    let cached: Vec<_> = std::fs::read_dir(state.path().join("cache"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("idranges.") && n != ".preflight-worked")
                .collect()
        })
        .unwrap_or_default();
    assert!(cached.is_empty(), "the native cache was used: {cached:?}");

    // Warm: the registry is gone, containerd has everything.
    drop(reg);
    let out = cvmd_run(&ctd, state.path(), "127.0.0.1:1", &reference)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("warm start:\n{stderr}");
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("image is in containerd"), "{stderr}");
    assert!(stderr.contains("from the second layer"), "{stderr}");
    assert_clean(state.path(), &ctd);
}

per_release!(
    containerd_boots_an_image_with_more_layers_than_one_mount_page_names,
    boots_a_deep_image
);
fn boots_a_deep_image(release: Release) {
    let reg = registry_for(release);
    let ctd = start_for(release, &reg);
    let state = tempfile::tempdir().unwrap();
    // 64 lower dirs of ~80 bytes each: over mount(2)'s 4 KiB of options.
    let mut builder = ImageBuilder::new(Format::Oci)
        .layer(busybox_image(&[]).layers[0].clone())
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "cat /etc/layer-* | /bin/busybox wc -l; exit 5",
        ]);
    for i in 0..63 {
        let layer = LayerBuilder::new().dir("etc", 0o755).file(
            &format!("etc/layer-{i}"),
            format!("{i}\n").as_bytes(),
            0o644,
        );
        builder = builder.layer(layer.build(Compression::Gzip));
    }
    let reference = push(&reg, "ctd/deep", "v1", &builder.build());
    let out = cvmd_run(&ctd, state.path(), &insecure(&reg), &reference)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(pull_path_line(via_transfer(release, &reg))),
        "{stderr}"
    );
    assert!(stderr.contains("63 stream=\"stdout\""), "{stderr}");
    assert_eq!(ctd.snapshots().len(), 64);
    assert_clean(state.path(), &ctd);
}

per_release!(
    containerd_pulls_from_an_authenticated_registry_without_showing_the_password,
    pulls_with_credentials
);
fn pulls_with_credentials(release: Release) {
    const USER: &str = "ctduser";
    const PASS: &str = "s3cret-ctd-pass";
    let reg = Registry::tls_basic(USER, PASS).unwrap();
    // 1.7 trusts the CA as a node's roots (it reads no hosts dir).
    let ctd = if release == Release::Trixie {
        start_for(release, &reg)
    } else {
        PrivateContainerd::start_release(release)
    };
    let state = tempfile::tempdir().unwrap();
    let reference = push(
        &reg,
        "ctd/private",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "echo private ok"]),
    );
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let secret = serde_json::json!({ "auths": { reg.host(): { "auth": auth } } }).to_string();
    let ca = reg.ca_pem_path().unwrap().to_str().unwrap().to_string();
    // The registry's CA: cvmd's own client takes it from --extra-certs;
    // containerd 2's transfer service from the node's hosts dir, as
    // /etc/containerd/certs.d/HOST/ca.crt on a node.
    let hosts = state.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(reg.host())).unwrap();
    std::fs::copy(&ca, hosts.join(reg.host()).join("ca.crt")).unwrap();
    let trust: Vec<String> = match release {
        Release::Bookworm => vec!["--extra-certs".into(), ca.clone()],
        Release::Trixie => vec![],
        Release::Sid => vec!["--containerd-hosts-dir".into(), hosts.display().to_string()],
    };

    // Without credentials: the registry's refusal, one line.
    let out = cvmd_run(&ctd, state.path(), "none", &reference)
        .args(&trust)
        .arg("run")
        .output()
        .unwrap();
    let line = error_line(&out);
    if release.has_transfer_service() {
        assert!(
            line.contains(&format!("could not pull {reference}"))
                && (line.contains("401") || line.contains("authorization")),
            "{line}"
        );
    } else {
        assert!(line.contains("requires authentication"), "{line}");
    }
    assert_clean(state.path(), &ctd);

    let out = cvmd_run(&ctd, state.path(), "none", &reference)
        .args(&trust)
        .args(["--pull-secret", &secret, "--log-level", "debug", "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", ctd.log());
    assert!(stderr.contains("private ok"), "{stderr}");
    assert!(
        stderr.contains(pull_path_line(release.has_transfer_service())),
        "{stderr}"
    );
    if release.has_transfer_service() {
        assert!(
            stderr.contains("answering containerd's credential request"),
            "{stderr}"
        );
    }
    assert!(
        !stderr.contains(PASS) && !stderr.contains(&auth),
        "{stderr}"
    );
    assert!(!ctd.log().contains(PASS), "containerd saw the password");
    assert_eq!(ctd.list(&["images", "ls"]), [reference]);
    assert_clean(state.path(), &ctd);
}

per_release!(
    containerd_killed_mid_pull_gives_one_clear_line_and_leaves_no_mount,
    killed_mid_pull
);
fn killed_mid_pull(release: Release) {
    let mut ctd = PrivateContainerd::start_release(release);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    let img = ImageBuilder::new(Format::Oci)
        .layer(crate::common::image::Layer::random(
            "big.bin",
            8,
            5,
            Compression::Gzip,
        ))
        .entrypoint(&["/bin/sh"])
        .build();
    push(&reg, "ctd/slow", "v1", &img);
    // 8 MiB at 512 KiB/s: the pull is still streaming when containerd dies.
    proxy.throttle_blobs(512 << 10);
    let child = run_through(&proxy, &ctd, state.path(), "ctd/slow:v1");
    let layer = img.layer_digests()[0].clone();
    assert!(
        crate::common::wait_until(Duration::from_secs(20), || proxy.blob_gets(&layer) > 0),
        "the pull never started"
    );
    std::thread::sleep(Duration::from_millis(500));
    ctd.kill();
    let out = child.wait_with_output().unwrap();
    let line = error_line(&out);
    eprintln!("{line}");
    assert!(
        line.contains(&format!(
            "containerd at {} stopped answering",
            ctd.socket().display()
        )),
        "{line}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(state.path().to_str().unwrap()),
        "a mount is left"
    );
}

#[test]
fn containerd_backend_retries_a_cut_download_from_the_start() {
    require!(ready());
    let ctd = PrivateContainerd::start();
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    let img = busybox_image(&["/bin/sh", "-c", "exit 0"]);
    push(&reg, "ctd/cut", "v1", &img);
    // The next three blob GETs (config, small layer, busybox layer) are cut
    // after 100 kB: only the busybox layer is longer.
    proxy.cut_blob_after(100_000, 3);
    let reference = format!("{}/ctd/cut:v1", proxy.host());
    let out = cvmd_run(&ctd, state.path(), &proxy.host(), &reference)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(": retry 1:"), "{stderr}");
    assert_eq!(proxy.blob_gets(&img.layer_digests()[0]), 2);
    assert_clean(state.path(), &ctd);
}

#[test]
fn containerd_down_is_one_line_and_auto_without_a_socket_is_native_and_quiet() {
    require!(ready());
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("no-containerd.sock");
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "ctd/auto",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "exit 3"]),
    );
    let base = |backend: &str| {
        let mut c = Command::new(crate::common::cvmd_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", state.path())
            .arg("--cache-dir")
            .arg(state.path().join("cache"))
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .args(["--insecure-registries", &reg.host()])
            .args(["--image", &reference])
            .args(["--workspace", &workspace_name(state.path())])
            .args([
                "--log-format",
                "text",
                "--runtime",
                "runc",
                "--network",
                "none",
            ])
            .args(["--image-backend", backend])
            .arg("--containerd-socket")
            .arg(&missing)
            .arg("run")
            .stdin(Stdio::null());
        c
    };
    let out = base("containerd").output().unwrap();
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "containerd at {} does not answer",
            missing.display()
        )),
        "{line}"
    );
    assert!(line.contains("CVMD_IMAGE_BACKEND=native"), "{line}");

    let out = base("auto").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        !stderr.contains("containerd"),
        "auto without a socket says nothing about containerd: {stderr}"
    );
}

per_release!(
    containerd_starts_an_image_the_node_pulled_itself_without_the_registry,
    starts_what_the_node_pulled
);
fn starts_what_the_node_pulled(release: Release) {
    let ctd = PrivateContainerd::start_release(release);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "ctd/node-pulled",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "cat /etc/motd; exit 5"]),
    );
    // What the kubelet does through CRI: containerd's own pull and unpack,
    // no cvmd involved (in a cluster: CVMD_CONTAINERD_NAMESPACE=k8s.io).
    let pulled = ctd.ctr(&["images", "pull", "--plain-http", &reference]);
    assert!(
        pulled.status.success(),
        "ctr pull: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    drop(reg);
    let out = cvmd_run(&ctd, state.path(), "127.0.0.1:1", &reference)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}\n{}", ctd.log());
    assert!(stderr.contains("image is in containerd"), "{stderr}");
    assert!(stderr.contains("from the second layer"), "{stderr}");
    assert_clean(state.path(), &ctd);
    // containerd's image stays as the node left it.
    assert_eq!(
        ctd.list(&["images", "ls"]),
        std::slice::from_ref(&reference)
    );
}

#[test]
fn transfer_asked_of_a_containerd_without_it_is_one_clear_line() {
    require!(ready());
    let ctd = PrivateContainerd::start_release(Release::Bookworm);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(&reg, "ctd/old", "v1", &busybox_image(&["/bin/sh"]));
    let out = cvmd_run(&ctd, state.path(), &reg.host(), &reference)
        .args(["--containerd-pull", "transfer", "run"])
        .output()
        .unwrap();
    let line = error_line(&out);
    // Preflight, before anything is pulled.
    assert!(
        line.contains(&format!(
            "containerd 1.6.20~ds1 at {} has no transfer service",
            ctd.socket().display()
        )),
        "{line}"
    );
    assert!(line.contains("CVMD_CONTAINERD_PULL=auto"), "{line}");
    assert!(ctd.list(&["images", "ls"]).is_empty());
    assert_clean(state.path(), &ctd);
}

#[test]
fn auto_uses_cvmds_own_client_where_the_transfer_service_cannot_take_the_ca() {
    require!(ready_with(Release::Sid));
    const USER: &str = "ctduser";
    const PASS: &str = "s3cret-ctd-pass";
    let ctd = PrivateContainerd::start_release(Release::Sid);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::tls_basic(USER, PASS).unwrap();
    let reference = push(
        &reg,
        "ctd/own-ca",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "echo own ca ok"]),
    );
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let secret = serde_json::json!({ "auths": { reg.host(): { "auth": auth } } }).to_string();
    let ca = reg.ca_pem_path().unwrap().to_str().unwrap().to_string();
    let out = cvmd_run(&ctd, state.path(), "none", &reference)
        .args(["--extra-certs", &ca, "--pull-secret", &secret, "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("own ca ok"), "{stderr}");
    assert!(
        stderr.contains("pulling with cvmd's own client into containerd's content store")
            && stderr.contains("CVMD_EXTRA_CERTS"),
        "{stderr}"
    );
    assert!(stderr.contains("pulled into containerd"), "{stderr}");
    assert!(!stderr.contains(PASS), "{stderr}");
    assert_eq!(ctd.list(&["images", "ls"]), [reference]);
    assert_clean(state.path(), &ctd);
}

#[test]
fn transfer_pull_progress_reaches_cvmctl_as_with_the_registry_backend() {
    require!(ready_with(Release::Sid));
    let ctd = PrivateContainerd::start_release(Release::Sid);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    // Alive a while after the pull, for Status to be asked.
    let img = busybox_and_random(4, 9, &["/bin/sh", "-c", "sleep 3"]);
    push(&reg, "ctd/progress", "v1", &img);
    // 4 MiB at 1 MiB/s: containerd reports it several times on the way.
    proxy.throttle_blobs(1 << 20);
    let child = run_through(&proxy, &ctd, state.path(), "ctd/progress:v1");
    let socket = state.path().join("state/cvmd.sock");
    let ctl = |args: &[&str]| {
        Command::new(crate::common::cvmctl_bin())
            .env_clear()
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(
        crate::common::wait_until(Duration::from_secs(20), || socket.exists()
            && ctl(&["status"]).status.success()),
        "cvmd never answered"
    );
    let pull = ctl(&["pull"]);
    let shown = String::from_utf8_lossy(&pull.stderr);
    assert_eq!(pull.status.code(), Some(0), "{shown}");
    let big = img.layer_digests()[1].clone();
    let short = &big["sha256:".len().."sha256:".len() + 12];
    assert!(
        shown.contains(&format!("{short}: downloading"))
            && shown.contains(&format!("{short}: done")),
        "the big layer's start and end: {shown}"
    );
    let status = || -> serde_json::Value {
        serde_json::from_slice(&ctl(&["status", "--json"]).stdout).unwrap()
    };
    assert!(
        crate::common::wait_until(Duration::from_secs(3), || status()["image"]["source"]
            .is_string()),
        "no image source in Status"
    );
    let status = status();
    assert_eq!(status["timeline"][1]["name"], "pull", "{status}");
    let source = status["image"]["source"].as_str().unwrap_or_default();
    assert!(
        source.starts_with("containerd 2.") && source.ends_with("pulled by its transfer service"),
        "{status}"
    );
    assert!(
        status["image"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{status}"
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("pulled by containerd's transfer service"),
        "{stderr}"
    );
    assert_clean(state.path(), &ctd);
}

#[test]
fn transfer_answers_a_token_registry_with_the_password_or_the_identity_token() {
    require!(ready_with(Release::Sid));
    use crate::common::token::{Grant, TokenConfig};
    const USER: &str = "tokenuser";
    const PASS: &str = "s3cret-token-pass";
    let reg = Registry::token(TokenConfig::new().user(USER, PASS)).unwrap();
    let ts = reg.token_server().unwrap();
    let reference = push(
        &reg,
        "team/ws",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "echo token ok"]),
    );
    let docker_config = |state: &Path, entry: serde_json::Value| {
        let dir = state.join(".docker");
        std::fs::create_dir_all(&dir).unwrap();
        let json = serde_json::json!({ "auths": { reg.host(): entry } });
        std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let rt = ts.refresh_token(USER, PASS, "team/ws");
    for (entry, grant) in [
        (
            serde_json::json!({ "auth": auth }),
            // containerd posts the password grant (or falls back to Basic).
            None,
        ),
        (
            serde_json::json!({ "auth": "", "identitytoken": rt }),
            Some(Grant::RefreshToken(USER.into())),
        ),
    ] {
        let ctd = PrivateContainerd::start_release(Release::Sid);
        let state = tempfile::tempdir().unwrap();
        docker_config(state.path(), entry);
        let before = ts.request_count();
        let out = cvmd_run(&ctd, state.path(), &reg.host(), &reference)
            .arg("run")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}\n{}", ctd.log());
        assert!(stderr.contains("token ok"), "{stderr}");
        assert!(
            stderr.contains("pulled by containerd's transfer service"),
            "{stderr}"
        );
        assert!(!stderr.contains(PASS) && !stderr.contains(&rt), "{stderr}");
        let ours = &ts.requests()[before..];
        match &grant {
            Some(g) => assert!(ours.iter().any(|r| &r.grant == g), "{ours:?}"),
            None => assert!(
                ours.iter().any(|r| matches!(
                    &r.grant,
                    Grant::Password(u) | Grant::Basic(u) if u == USER
                )),
                "{ours:?}"
            ),
        }
        assert_clean(state.path(), &ctd);
    }
}

#[test]
fn a_snapshotter_the_transfer_service_does_not_unpack_to_falls_back_to_layer_by_layer_on_1_7() {
    require!(ready_with(Release::Trixie));
    falls_back_to_layer_by_layer(Release::Trixie);
}

#[test]
fn a_snapshotter_the_transfer_service_does_not_unpack_to_falls_back_to_layer_by_layer_on_2() {
    require!(ready_with(Release::Sid));
    falls_back_to_layer_by_layer(Release::Sid);
}

fn falls_back_to_layer_by_layer(release: Release) {
    let reg = registry_for(release);
    let reference = push(
        &reg,
        "ctd/native-snap",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "echo unpacked ok"]),
    );
    // A node whose containerd unpacks pulls into another snapshotter.
    let ctd = PrivateContainerd::start_configured(
        release,
        reg.ca_pem_path(),
        r#"
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"
"#,
    );
    let state = tempfile::tempdir().unwrap();
    let out = cvmd_run(&ctd, state.path(), &insecure(&reg), &reference)
        .args(["--containerd-pull", "transfer", "run"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "containerd's transfer service pulled {reference} but left no overlayfs snapshot for linux/amd64"
        )),
        "{line}\n{}",
        ctd.log()
    );
    assert_clean(state.path(), &ctd);

    // cvmd trusts what the node trusts, as containerd does (its own
    // client pulls here).
    let mut run = cvmd_run(&ctd, state.path(), &insecure(&reg), &reference);
    if let Some(ca) = reg.ca_pem_path() {
        run.env("SSL_CERT_FILE", ca);
    }
    let out = run.arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("unpacked ok"), "{stderr}");
    assert!(
        stderr.contains("unpacking layer by layer instead"),
        "{stderr}"
    );
    assert!(stderr.contains("pulled into containerd"), "{stderr}");
    assert_clean(state.path(), &ctd);
}

#[test]
fn preflight_names_the_pull_path_and_without_the_snapshots_fails_or_auto_goes_native() {
    require!(ready_with(Release::Sid));
    let ctd = PrivateContainerd::start_release(Release::Sid);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "ctd/hidden",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "exit 8"]),
    );
    // cvmd in a mount namespace of its own; with `hide_root` as in a pod
    // without containerd's root mounted in (an empty dir there).
    let cvmd = |hide_root: bool, backend: &str, args: &str| {
        let command = format!(
            "exec {cvmd} --cache-dir {cache} --state-dir {state} --workspace {ws} --runtime runc --network none --insecure-registries {reg} --image {reference} --image-backend {backend} --containerd-socket {sock} {args}",
            cvmd = crate::common::cvmd_bin().display(),
            cache = state.path().join("cache").display(),
            state = state.path().join("state").display(),
            ws = workspace_name(state.path()),
            reg = reg.host(),
            sock = ctd.socket().display(),
        );
        let script = if hide_root {
            format!("mount -t tmpfs none {} && {command}", ctd.root().display())
        } else {
            command
        };
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap()
    };
    let check = |out: &std::process::Output| {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "containerd")
            .cloned()
            .expect("a containerd check")
    };
    let c = check(&cvmd(false, "containerd", "preflight --json"));
    assert_eq!(c["status"], "ok", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("containerd 2.")
            && detail.ends_with("pulls through its transfer service"),
        "{detail}"
    );
    let hidden = cvmd(true, "containerd", "preflight --json");
    assert_eq!(hidden.status.code(), Some(1));
    let c = check(&hidden);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("into the outer container at the same path"),
        "{c}"
    );
    let c = check(&cvmd(true, "auto", "preflight --json"));
    assert_eq!(c["status"], "warn", "{c}");

    // auto then starts from cvmd's own cache, saying why.
    let out = cvmd(true, "auto", "run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("image backend auto: containerd cannot serve, using cvmd's own")
            && stderr.contains("are not visible here"),
        "{stderr}"
    );
    assert!(
        ctd.list(&["images", "ls"]).is_empty(),
        "containerd was used"
    );
}

per_release!(
    sigterm_during_a_pull_stops_at_once_and_a_rerun_completes,
    sigterm_mid_pull
);
fn sigterm_mid_pull(release: Release) {
    let ctd = PrivateContainerd::start_release(release);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    let img = busybox_and_random(8, 11, &["/bin/sh", "-c", "exit 4"]);
    push(&reg, "ctd/term", "v1", &img);
    // 8 MiB at 512 KiB/s: still streaming when the signal comes.
    proxy.throttle_blobs(512 << 10);
    let child = run_through(&proxy, &ctd, state.path(), "ctd/term:v1");
    let big = img.layer_digests()[1].clone();
    assert!(
        crate::common::wait_until(Duration::from_secs(20), || proxy.blob_gets(&big) > 0),
        "the pull never started"
    );
    std::thread::sleep(Duration::from_millis(500));
    let asked = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        asked.elapsed()
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(state.path().to_str().unwrap()),
        "a mount is left"
    );
    assert!(
        ctd.list(&["images", "ls"]).is_empty(),
        "a half-pulled image was recorded"
    );
    // The pull's lease went with it (not left to expire).
    assert_clean(state.path(), &ctd);

    // The next start pulls again and boots.
    proxy.throttle_blobs(0);
    let out = run_through(&proxy, &ctd, state.path(), "ctd/term:v1")
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(pull_path_line(via_transfer(release, &reg))),
        "{stderr}"
    );
}

per_release!(
    containerd_workspaces_keep_their_writes_across_restarts_and_take_an_id_mapping,
    keeps_writes_and_maps_ids
);
fn keeps_writes_and_maps_ids(release: Release) {
    let reg = registry_for(release);
    let ctd = start_for(release, &reg);
    let state = tempfile::tempdir().unwrap();
    let reference = push(
        &reg,
        "ctd/keep",
        "v1",
        &busybox_image(&[
            "/bin/sh",
            "-c",
            "cat /etc/kept 2>/dev/null || echo nothing-kept; echo kept-across-restarts > /etc/kept",
        ]),
    );
    let run = |state: &Path, extra: &[&str]| {
        let out = cvmd_run(&ctd, state, &insecure(&reg), &reference)
            .args(extra)
            .arg("run")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_clean(state, &ctd);
        stderr
    };
    let first = run(state.path(), &[]);
    assert!(first.contains("nothing-kept"), "{first}");
    // The writable layer is the workspace's, in its state dir: as with the
    // native backend it outlasts cvmd, and containerd's layers are untouched.
    let second = run(state.path(), &[]);
    assert!(second.contains("kept-across-restarts"), "{second}");
    // Its own ID range, by ID-mapped layers (not a chown of containerd's).
    let mapped_state = tempfile::tempdir().unwrap();
    for expect in ["nothing-kept", "kept-across-restarts"] {
        let mapped = run(mapped_state.path(), &["--idmap", "auto"]);
        assert!(mapped.contains("idmap=IdMappedMount"), "{mapped}");
        assert!(mapped.contains(expect), "{mapped}");
    }
}

#[test]
fn prefetch_fills_containerd_when_it_is_the_image_backend() {
    require!(ready_with(Release::Sid));
    let ctd = PrivateContainerd::start_release(Release::Sid);
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::plain().unwrap();
    let reference = push(
        &reg,
        "ctd/prefetched",
        "v1",
        &busybox_image(&["/bin/sh", "-c", "exit 6"]),
    );
    let out = cvmd_run(&ctd, state.path(), &reg.host(), &reference)
        .args(["prefetch", &reference])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        printed.starts_with(&format!("{reference}@sha256:")),
        "{printed}"
    );
    assert_eq!(
        ctd.list(&["images", "ls"]),
        std::slice::from_ref(&reference)
    );
    assert_eq!(ctd.snapshots().len(), 2, "{:?}", ctd.snapshots());
    let cached = std::fs::read_dir(state.path().join("cache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "the native cache was filled instead");
    assert_clean(state.path(), &ctd);

    // The workspace then starts from containerd, registry gone.
    drop(reg);
    let out = cvmd_run(&ctd, state.path(), "127.0.0.1:1", &reference)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("image is in containerd"), "{stderr}");
}
