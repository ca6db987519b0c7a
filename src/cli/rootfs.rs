//! `cvmd rootfs IMAGE DIR`: assemble a workspace rootfs for inspection, from
//! the node cache (pulling what is missing), and say how and how fast.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Settings;
use crate::digest::Digest;
use crate::progress::PlainLines;
use crate::registry::Reference;
use crate::rootfs::{self, IdMapMode, Mode, ModePreference, Request};
use crate::store::layers::LayerCache;
use crate::store::lease::Lease;

#[derive(clap::Args)]
pub struct RootfsArgs {
    /// Image reference (defaults to the image setting).
    // Its own id: "image" is the global setting's.
    #[arg(id = "image_ref", value_name = "IMAGE")]
    pub image: Option<String>,
    /// Where the rootfs appears.
    pub dir: Option<PathBuf>,
    /// overlay, flat, or auto (overlay, falling back to a flat copy).
    #[arg(long, default_value = "auto", value_parser = parse_mode)]
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

fn parse_mode(s: &str) -> Result<ModePreference, String> {
    match s {
        "auto" => Ok(ModePreference::Auto),
        "overlay" => Ok(ModePreference::Overlay),
        "flat" => Ok(ModePreference::Flat),
        _ => Err(format!("{s:?} is not one of auto, overlay, flat")),
    }
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
    // With --unmount the only positional is the DIR.
    let (image, dir) = match (args.unmount, &args.image, &args.dir) {
        (true, _, Some(d)) => (None, d.clone()),
        (true, Some(d), None) => (None, PathBuf::from(d)),
        (false, Some(i), Some(d)) => (Some(i.clone()), d.clone()),
        (false, Some(d), None) if settings.image.is_some() => {
            (settings.image.clone(), PathBuf::from(d))
        }
        _ => anyhow::bail!("usage: cvmd rootfs IMAGE DIR (or cvmd rootfs --unmount DIR)"),
    };
    let dir = std::path::absolute(&dir).with_context(|| format!("rootfs dir {}", dir.display()))?;
    let name = workspace_name(args, &dir);
    if args.unmount {
        rootfs::teardown(&dir)?;
        Lease::release(&settings.cache_dir, &name);
        println!("unmounted {}", dir.display());
        return Ok(());
    }
    let image = image.context("no image: give one as an argument or set CVMD_IMAGE")?;
    let reference: Reference = image.parse()?;
    let (ready, lease) = crate::image::ensure_leased(
        settings,
        &reference,
        settings.pull_policy,
        &PlainLines,
        &name,
        Some(&dir),
    )
    .await?;
    let resolved = started.elapsed();
    crate::image::keep_within_budget(settings, &[]).await;

    let layers = LayerCache::open(&settings.cache_dir)?;
    let diff_ids = ready.record.diff_ids();
    let idmap = match args.idmap.as_deref() {
        None => None,
        Some(v) => {
            let setting = crate::config::parse_idmap_setting(v)
                .map_err(|e| anyhow::anyhow!("--idmap: {e}"))?;
            crate::workspace::idmap_for(setting, &settings.cache_dir, &name).await?
        }
    };
    let request = Request {
        layers: diff_ids.iter().map(|d| layers.tree(d)).collect(),
        workspace_dir: settings.state_dir.join("workspaces").join(&name),
        target: dir.clone(),
        mode: args.mode,
        idmap,
        reset: args.reset,
        carry: Vec::new(),
    };
    let assembled = rootfs::assemble(&request)?;
    // The mount outlives this command; so must the layers' protection.
    lease.keep_while_mounted();
    let total = started.elapsed();

    let mode = match assembled.mode {
        Mode::Overlay => "overlay",
        Mode::Flat => "flat",
    };
    let idmap_mode = match assembled.idmap_mode {
        IdMapMode::None => "none",
        IdMapMode::IdMappedMount => "id-mapped mount",
        IdMapMode::ChownedCopy => "chowned copy",
    };
    let mut phases: Vec<(&str, Duration)> = vec![("image", resolved)];
    phases.extend(assembled.phases.iter().copied());
    if args.json {
        let json = serde_json::json!({
            "image": ready.record.reference,
            "digest": ready.record.manifest,
            "dir": dir,
            "workspace": name,
            "mode": mode,
            "idmap": idmap_mode,
            "host_id": request.idmap.map(|m| m.host_uid),
            "pulled": ready.pulled,
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
            "{} at {}: mode {mode}, id mapping {idmap_mode}; {}; total {:.1} ms",
            ready.record.reference,
            dir.display(),
            timings.join(", "),
            total.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
