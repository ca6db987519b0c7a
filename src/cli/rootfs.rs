//! `cvmd rootfs IMAGE DIR`: assemble a workspace rootfs for inspection, from
//! the node cache (pulling what is missing), and say how and how fast.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::backend::{Backend, Holder, MountRequest, RootfsOptions};
use crate::config::Settings;
use crate::digest::Digest;
use crate::idmap::IdMapSetting;
use crate::progress::PlainLines;
use crate::registry::Reference;
use crate::rootfs::{IdMapMode, ModePreference};

#[derive(Debug, clap::Args)]
pub struct RootfsArgs {
    /// Image reference (defaults to the image setting).
    // Its own id: "image" is the global setting's.
    #[arg(id = "image_ref", value_name = "IMAGE")]
    pub image: Option<String>,
    /// Where the rootfs appears.
    pub dir: Option<PathBuf>,
    /// overlay, flat, or auto (overlay, falling back to a flat copy).
    #[arg(long, default_value = "auto")]
    pub mode: ModePreference,
    /// Shift owners for a user namespace: `none`, `auto` (this workspace's own
    /// range on the node) or HOST_UID[:HOST_GID[:SIZE]] (container ID 0 maps
    /// to HOST_UID; SIZE defaults to 65536).
    #[arg(long)]
    pub idmap: Option<String>,
    /// Discard the workspace's disk (its upper dir) first.
    #[arg(long)]
    pub reset: bool,
    /// The workspace whose disk this is [default: derived from DIR].
    #[arg(long)]
    pub name: Option<String>,
    /// Unmount DIR (and release its layers) instead.
    #[arg(long, conflicts_with_all = ["mode", "idmap", "reset"])]
    pub unmount: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A workspace's state lives under the state dir by name; an unnamed
/// rootfs is named after where it is mounted, so the same DIR gets the same
/// disk back.
fn workspace_name(args: &RootfsArgs, dir: &Path) -> String {
    args.name.clone().unwrap_or_else(|| {
        format!(
            "rootfs-{}",
            &Digest::of(dir.as_os_str().as_encoded_bytes()).hex()[..16]
        )
    })
}

pub async fn rootfs(settings: &Settings, args: &RootfsArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let run = &settings.run;
    // With --unmount the only positional is the DIR.
    let (image, dir) = match (args.unmount, &args.image, &args.dir) {
        (true, _, Some(d)) => (None, d.clone()),
        (true, Some(d), None) => (None, PathBuf::from(d)),
        (false, Some(i), Some(d)) => (Some(i.clone()), d.clone()),
        (false, Some(d), None) if run.image.is_some() => (run.image.clone(), PathBuf::from(d)),
        _ => anyhow::bail!("usage: cvmd rootfs IMAGE DIR (or cvmd rootfs --unmount DIR)"),
    };
    let dir = std::path::absolute(&dir).with_context(|| format!("rootfs dir {}", dir.display()))?;
    let name = workspace_name(args, &dir);
    let cache_dir = &run.pull.cache_dir;
    if args.unmount {
        Backend::unmount(&run.backend, cache_dir, &name, &dir).await?;
        println!("unmounted {}", dir.display());
        return Ok(());
    }
    // The backend `cvmd run` uses, so every image setting means the same
    // here: with containerd the image and its layers stay containerd's.
    let backend = Backend::select(&run.backend).await?;
    let image = image.context("no image: give one as an argument or set CVMD_IMAGE")?;
    let reference: Reference = image.parse()?;
    let holder = Holder {
        identity: &name,
        mount: Some(&dir),
    };
    let ready = backend
        .ensure(
            &run.pull,
            &reference,
            run.pull.policy,
            holder,
            None,
            &PlainLines,
        )
        .await?;
    let resolved = started.elapsed();
    backend.keep_within_budget(&run.pull, &[]).await;

    let idmap = match args.idmap.as_deref() {
        None => IdMapSetting::None,
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--idmap: {e}"))?,
    };
    let request = MountRequest {
        identity: &name,
        disk: run.state_dir.join("workspaces").join(&name),
        target: dir.clone(),
        options: RootfsOptions {
            mode: args.mode,
            idmap,
        },
        reset: args.reset,
        carry: Vec::new(),
    };
    let mounted = backend.mount_rootfs(cache_dir, &ready, &request).await?;
    let total = started.elapsed();

    let mode = mounted.mode.to_string();
    // Spelled for people here; Status's spelling is the mode's Display.
    let idmap_mode = match mounted.idmap_mode {
        IdMapMode::None => "none",
        IdMapMode::IdMappedMount => "id-mapped mount",
        IdMapMode::ChownedCopy => "chowned copy",
    };
    let mut phases: Vec<(&str, Duration)> = vec![("image", resolved)];
    phases.extend(mounted.phases.iter().copied());
    let host_id = mounted.idmap.map(|m| m.host_uid);
    let (image, digest, pulled) = (ready.reference.clone(), ready.digest.clone(), ready.pulled);
    // The mount outlives this command; so must what holds its layers.
    backend.keep_mounted(mounted, ready);
    if args.json {
        let json = serde_json::json!({
            "image": image,
            "digest": digest,
            "dir": dir,
            "workspace": name,
            "mode": mode,
            "idmap": idmap_mode,
            "host_id": host_id,
            "pulled": pulled,
            "phases_ms": phases.iter().map(|(p, d)| (p.to_string(), serde_json::json!(d.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
            "total_ms": total.as_secs_f64() * 1e3,
        });
        println!("{json}");
    } else {
        let timings: Vec<String> = phases
            .iter()
            .map(|(p, d)| format!("{p} {:.1} ms", d.as_secs_f64() * 1e3))
            .collect();
        println!(
            "{image} at {}: mode {mode}, id mapping {idmap_mode}; {}; total {:.1} ms",
            dir.display(),
            timings.join(", "),
            total.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
