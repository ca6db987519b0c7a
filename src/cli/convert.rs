//! `cvmd convert IMAGE TARGET [--format estargz|zstd:chunked]`: an eStargz
//! (or zstd:chunked) copy of IMAGE pushed as TARGET, so an image can be
//! started lazily without other tools. IMAGE's blobs are pulled into the
//! content store (verified, as every pull); each layer is rewritten into a
//! temp file under the cache dir, pushed, and the config (new diff_ids) and
//! manifest (new layer descriptors with the format's TOC annotations)
//! follow. One platform: an index resolves to this machine's (or
//! CVMD_PLATFORM's) manifest. zstd layers have no Docker media type: a
//! Docker manifest converted to zstd:chunked becomes an OCI one.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::Settings;
use crate::estargz::{write_layer, Layout, WriteOptions, Written};
use crate::progress::PlainLines;
use crate::registry::manifest::{Compression, Layer, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::registry::{Reference, RegistryClient};
use crate::store::ContentStore;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The image to convert.
    #[arg(id = "image_ref", value_name = "IMAGE")]
    pub image: String,
    /// Where to push the eStargz copy (a registry reference; tag `latest`
    /// when none is given).
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The seekable format of the copy's layers.
    #[arg(long, value_enum, default_value_t = Format::Estargz)]
    pub format: Format,
    /// Uncompressed bytes per chunk (a gzip member or zstd frame a lazy
    /// read fetches whole).
    /// Between 4 KiB and the 16 MiB a reader accepts.
    #[arg(long, default_value_t = crate::estargz::writer::DEFAULT_CHUNK_SIZE,
          value_parser = clap::value_parser!(u64).range(4096..=16 << 20))]
    pub chunk_size: u64,
    /// A file to put first in its layer, before the prefetch landmark (a
    /// lazy start fetches those first); repeat for more, in order of use.
    /// eStargz only: zstd:chunked has no landmark.
    #[arg(long = "prefetch", value_name = "PATH")]
    pub prefetch: Vec<String>,
}

/// `--format`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// gzip, stargz-snapshotter's docs/estargz.md.
    Estargz,
    /// zstd, containers/storage's zstd:chunked.
    #[value(name = "zstd:chunked")]
    ZstdChunked,
}

impl Format {
    fn layout(self) -> Layout {
        match self {
            Format::Estargz => Layout::Estargz,
            Format::ZstdChunked => Layout::ZstdChunked,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Estargz => "eStargz",
            Format::ZstdChunked => "zstd:chunked",
        }
    }
}

const OCI_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_GZIP_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub async fn convert(settings: &Settings, args: &ConvertArgs) -> anyhow::Result<()> {
    let source: Reference = args.image.parse()?;
    let mut target: Reference = args.target.parse()?;
    if target.digest.is_some() {
        bail!("convert target {target} names a digest: give a tag (the new image's digest is printed)");
    }
    if target.tag.is_none() {
        target.tag = Some("latest".into());
    }
    if args.format == Format::ZstdChunked && !args.prefetch.is_empty() {
        bail!("--prefetch orders files before eStargz's prefetch landmark, which zstd:chunked has none of: drop it or use --format estargz");
    }
    let pull = &settings.run.pull;
    let pulled = crate::image::pull(pull, &source, false, &PlainLines)
        .await
        .with_context(|| format!("pulling {source}"))?;
    let store = ContentStore::open(&pull.cache_dir)?;
    let client = RegistryClient::new(pull.registry.client_options()?)?;

    let manifest_bytes = store.read_blob(&pulled.manifest_digest)?;
    let mut manifest: Value = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("manifest of {}", pulled.reference))?;
    let config_digest = &pulled.manifest.config.digest;
    let mut config: Value = serde_json::from_slice(&store.read_blob(config_digest)?)
        .with_context(|| format!("config of {}", pulled.reference))?;
    let mut oci = manifest.get("mediaType").and_then(Value::as_str) != Some(DOCKER_MANIFEST);
    if !oci && args.format == Format::ZstdChunked {
        // Docker's schema 2 has no zstd layer type; its config is an OCI one.
        manifest["mediaType"] = Value::from(OCI_MANIFEST);
        manifest["config"]["mediaType"] = Value::from(OCI_CONFIG);
        oci = true;
    }
    let count = pulled.manifest.layers.len();
    let scratch = pull.cache_dir.join("ingest");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;

    for (i, layer) in pulled.manifest.layers.iter().enumerate() {
        let what = format!("layer {}/{count} ({})", i + 1, layer.digest);
        let blob = store.blob_path(&layer.digest);
        let out = tempfile::Builder::new()
            .prefix("convert-")
            .tempfile_in(&scratch)
            .with_context(|| format!("{what}: creating a temp file in {}", scratch.display()))?;
        let opts = WriteOptions {
            chunk_size: args.chunk_size,
            prefetch: args.prefetch.clone(),
            ..WriteOptions::default()
        };
        let (layer_c, out_path) = (layer.clone(), out.path().to_path_buf());
        let layout = args.format.layout();
        let written =
            tokio::task::spawn_blocking(move || rewrite(&blob, &layer_c, &out_path, &opts, layout))
                .await?
                .with_context(|| format!("{what}: rewriting into {}", args.format.name()))?;
        let pushed = client
            .push_blob_file(&target, &written.blob_digest, written.blob_size, out.path())
            .await
            .with_context(|| format!("{what}: pushing to {target}"))?;
        drop(out);
        let desc = &mut manifest["layers"][i];
        desc["mediaType"] = Value::from(match (args.format, oci) {
            (Format::ZstdChunked, _) => OCI_ZSTD_LAYER,
            (Format::Estargz, true) => OCI_GZIP_LAYER,
            (Format::Estargz, false) => DOCKER_GZIP_LAYER,
        });
        desc["digest"] = Value::from(written.blob_digest.to_string());
        desc["size"] = Value::from(written.blob_size);
        if let Some(obj) = desc.as_object_mut() {
            obj.remove("urls");
        }
        for (key, value) in written.annotations() {
            desc["annotations"][key] = Value::from(value);
        }
        config["rootfs"]["diff_ids"][i] = Value::from(written.diff_id.to_string());
        println!(
            "{what}: {} bytes -> {} ({} bytes, toc {}){}",
            layer.size,
            written.blob_digest,
            written.blob_size,
            written.toc_digest,
            if pushed {
                ""
            } else {
                ", already in the target"
            }
        );
    }

    let config_bytes = serde_json::to_vec(&config)?;
    let config_size = config_bytes.len() as u64;
    let (config_digest, _) = client
        .push_blob_bytes(&target, config_bytes.into())
        .await
        .with_context(|| format!("pushing the config to {target}"))?;
    manifest["config"]["digest"] = Value::from(config_digest.to_string());
    manifest["config"]["size"] = Value::from(config_size);
    let media_type = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let digest = client
        .push_manifest(&target, &media_type, manifest_bytes.into())
        .await
        .with_context(|| format!("pushing the manifest to {target}"))?;
    println!("{target}@{digest}");
    Ok(())
}

/// The stored blob at `blob`, decompressed, rewritten in `layout` into
/// `out`. With a prefetch list the blob is read twice (prioritized files
/// first).
fn rewrite(
    blob: &Path,
    layer: &Layer,
    out: &Path,
    opts: &WriteOptions,
    layout: Layout,
) -> anyhow::Result<Written> {
    let compression = layer.compression;
    let open = || -> io::Result<Box<dyn Read>> {
        let file = io::BufReader::new(File::open(blob)?);
        Ok(match compression {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
        })
    };
    let file = File::create(out).with_context(|| format!("writing {}", out.display()))?;
    let mut w = io::BufWriter::new(file);
    let written = write_layer(open, &mut w, opts, layout)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(written)
}
