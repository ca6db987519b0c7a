//! A running busybox workspace for the exec tests: the image pushed to a
//! real `docker-registry`, assembled by `cvmd rootfs`, written as a bundle
//! by `cvmd::bundle::write_bundle` and created and started by the real
//! `runc` through the process-wide reaper.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cvmd::bundle::{write_bundle, BundleInput, RuntimeFlavor};
use cvmd::runtime::{ContainerIo, Runtime};
use cvmd::supervisor::reaper::{Exit, Reaper};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::common::busybox::busybox_layer;
use crate::common::image::{Compression, Format, ImageBuilder, LayerBuilder};
use crate::common::layers::{self, can_run, CvmdOnCache};
use crate::common::prereq::{self, Need};
use crate::common::{self, Registry};

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "pwd", "tty", "stty", "sleep", "env", "true", "kill", "ls",
];

/// busybox-static with a user `bob` (1000, member of `wheel`) whose home
/// exists, and a /tmp.
fn busybox_image() -> crate::common::image::Image {
    let layer = busybox_layer(APPLETS)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000:Bob:/home/bob:/bin/sh\n",
            0o644,
        )
        .file(
            "etc/group",
            b"root:x:0:\nwheel:x:10:bob\nbob:x:1000:\n",
            0o644,
        )
        .dir("root", 0o700)
        .dir("tmp", 0o1777)
        .dir("home", 0o755)
        .dir("home/bob", 0o755);
    ImageBuilder::new(Format::Oci)
        .layer(layer.build(Compression::Gzip))
        .build()
}

/// Runs `cmd` through the reaper; its status and output.
async fn output(mut cmd: Command) -> (Exit, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = Reaper::start().unwrap().spawn(cmd).unwrap();
    let read = |fd: std::os::fd::OwnedFd| async move {
        let mut s = String::new();
        pipe::Receiver::from_owned_fd(fd)
            .unwrap()
            .read_to_string(&mut s)
            .await
            .unwrap();
        s
    };
    let (out, err) = tokio::join!(
        read(spawned.stdout.unwrap().into()),
        read(spawned.stderr.unwrap().into())
    );
    (spawned.exit.await.unwrap(), out, err)
}

/// A running busybox workspace; deleted (with `--force`) and its rootfs
/// unmounted when dropped, so that a failing test leaves nothing behind.
pub struct Workspace {
    pub rt: Runtime,
    pub id: String,
    runc: PathBuf,
    root: PathBuf,
    cvmd: CvmdOnCache,
    pub rootfs: PathBuf,
    state: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // Not through the reaper (no tokio runtime here): the reap loop may
        // take a status first, which only makes `status()` fail once the
        // process has exited.
        let quiet = |mut c: Command| {
            let _ = c
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let mut delete = Command::new(&self.runc);
        delete
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.id]);
        quiet(delete);
        quiet(self.cvmd.command(&[
            "rootfs",
            "--unmount",
            self.rootfs.to_str().unwrap(),
            "--state-dir",
            self.state.to_str().unwrap(),
        ]));
        if is_mounted(&self.rootfs) {
            let _ = nix::mount::umount2(&self.rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub use crate::common::is_mounted;

pub async fn workspace(test: &str) -> Need<Workspace> {
    workspace_mapped(test, None).await
}

/// With `idmap`, the workspace runs in a user namespace: container ID 0 is
/// host ID `idmap.host_uid`, as under sysbox-runc.
pub async fn workspace_mapped(test: &str, idmap: Option<cvmd::rootfs::IdMap>) -> Need<Workspace> {
    can_run()?;
    prereq::busybox()?;
    let runc = prereq::runc()?;
    let reaper = Reaper::start().unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("cvmd-exec-")
        .tempdir()
        .unwrap();
    // The container's processes must reach the rootfs.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let rootfs = tmp.path().join("rootfs");
    let state = tmp.path().join("state");
    let cvmd = {
        let reg = Registry::plain().unwrap();
        let reference = crate::common::layers::push(&reg, "exec/busybox", "v1", &busybox_image());
        let cvmd = CvmdOnCache::new(&cache, &reg.host());
        let map = idmap.map(|m| format!("{}:{}:{}", m.host_uid, m.host_gid, m.size));
        let mut args = vec![
            "rootfs",
            &reference,
            rootfs.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if let Some(map) = &map {
            args.extend(["--idmap", map]);
        }
        let cmd = cvmd.command(&args);
        let (exit, out, err) = output(cmd).await;
        assert!(exit.success(), "cvmd rootfs: {exit}\n{out}\n{err}");
        cvmd
    };
    let mut input = BundleInput::new("exec/busybox", &rootfs, RuntimeFlavor::Runc);
    input.image_run.env = vec!["PATH=/bin".into(), "IMG=from-image".into()];
    input.idmap = idmap;
    let bundle = tmp.path().join("bundle");
    let info = write_bundle(&bundle, &input).unwrap();
    assert_eq!(info.args[0], "/bin/sh", "the keep-alive runs");
    let root = tmp.path().join("runc-root");
    let rt =
        Runtime::new(&runc, tmp.path().join("logs"), Arc::new(reaper.clone())).with_root(&root);
    let id = format!("cvmd-exec-{test}-{}", std::process::id());
    let ws = Workspace {
        rt,
        id,
        runc,
        root,
        cvmd,
        rootfs,
        state,
        tmp,
    };
    let created = ws
        .rt
        .create(
            &ws.id,
            &bundle,
            &ws.tmp.path().join("init.pid"),
            ContainerIo::Null,
        )
        .await
        .unwrap();
    reaper.watch(created.pid).unwrap();
    ws.rt.start(&ws.id).await.unwrap();
    Ok(ws)
}
