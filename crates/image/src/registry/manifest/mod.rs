//! Manifests, indexes and their media types (OCI image spec and Docker
//! schema 2), and choosing the manifest for a platform. The documents are
//! oci-spec's types; this module adds cvmd's bounds, its sha256-only
//! digests and the platform text users write.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use oci_spec::image::{
    Arch, Descriptor as OciDescriptor, ImageIndex, ImageManifest as OciImageManifest, MediaType,
    Os, Platform as OciPlatform,
};

use super::RegistryError;
use cvmd_digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The Accept header: every kind we can read, so that the registry never
/// falls back to schema 1.
pub const ACCEPTED_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A descriptor as oci-spec reads it, with its digest checked to be one
/// cvmd verifies (sha256): the digest callers fetch and compare by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    // Boxed: oci-spec's descriptor is a few hundred bytes, most of them
    // options a registry rarely fills, and an index holds thousands.
    oci: Box<OciDescriptor>,
}

impl Descriptor {
    /// Converts at the boundary: oci-spec accepts sha384/sha512 and other
    /// algorithms, cvmd's store and checks know sha256 only.
    pub fn from_oci(oci: OciDescriptor, what: &str) -> Result<Self, RegistryError> {
        let digest =
            oci.digest()
                .as_ref()
                .parse::<Digest>()
                .map_err(|e| RegistryError::Invalid {
                    what: what.to_string(),
                    why: format!("descriptor {}: {e}", oci.digest()),
                })?;
        Ok(Descriptor {
            digest,
            oci: Box::new(oci),
        })
    }

    /// None when the registry left it out (index entries of some
    /// registries do).
    pub fn media_type(&self) -> Option<&MediaType> {
        match self.oci.media_type() {
            MediaType::Other(m) if m.is_empty() => None,
            m => Some(m),
        }
    }

    fn media_type_str(&self) -> &str {
        self.media_type().map_or("", AsRef::as_ref)
    }

    pub fn size(&self) -> u64 {
        self.oci.size()
    }

    pub fn platform(&self) -> Option<&OciPlatform> {
        self.oci.platform().as_ref()
    }

    /// The descriptor's annotations (e.g. eStargz's
    /// `containerd.io/snapshot/stargz/toc.digest` on a layer).
    pub fn annotations(&self) -> Option<&HashMap<String, String>> {
        self.oci.annotations().as_ref()
    }

    /// The descriptor as the registry sent it.
    pub fn oci(&self) -> &OciDescriptor {
        &self.oci
    }
}

/// oci-spec requires every descriptor's `mediaType`; some registries leave
/// it out of index entries. An empty one stands for "not said" (as before
/// oci-spec): an index entry's kind is then read from the document it
/// points at, and a config or layer without one is refused by name.
fn default_media_types(document: &mut serde_json::Value) {
    let fill = |d: &mut serde_json::Value| {
        if let Some(o) = d.as_object_mut() {
            o.entry("mediaType").or_insert_with(|| "".into());
        }
    };
    for key in ["config", "subject"] {
        if let Some(d) = document.get_mut(key) {
            fill(d);
        }
    }
    for key in ["layers", "manifests"] {
        if let Some(serde_json::Value::Array(ds)) = document.get_mut(key) {
            ds.iter_mut().for_each(fill);
        }
    }
}

/// The platform a pull asks for: oci-spec's [`OciPlatform`], with the
/// `os/arch[/variant]` text users write (CVMD_PLATFORM) and the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform(OciPlatform);

impl std::ops::Deref for Platform {
    type Target = OciPlatform;
    fn deref(&self) -> &OciPlatform {
        &self.0
    }
}

impl From<OciPlatform> for Platform {
    fn from(p: OciPlatform) -> Self {
        Platform(p)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&platform_text(&self.0))
    }
}

/// `os/arch[/variant]`, as docker and containerd print a platform.
pub fn platform_text(p: &OciPlatform) -> String {
    let mut s = format!("{}/{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push('/');
        s.push_str(v);
    }
    s
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(format!(
                "platform {s:?} is not os/arch[/variant], e.g. linux/amd64"
            ));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let mut p = OciPlatform::default();
        p.set_os(Os::from(os));
        p.set_architecture(Arch::from(architecture));
        p.set_variant(variant.map(str::to_string));
        Platform(p)
    }

    /// The platform this binary runs on, in OCI's GOARCH names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform::new("linux", architecture, variant)
    }

    /// OCI image-index platform matching: os and architecture equal; a
    /// variant is compared only when both name one (arm64's `v8` is the
    /// default and often left out).
    fn matches(&self, candidate: &OciPlatform) -> bool {
        self.os() == candidate.os()
            && self.architecture() == candidate.architecture()
            && match (self.variant(), candidate.variant()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// A layer cvmd can unpack: its descriptor's digest (sha256), size, media
/// type and annotations, and the compression its media type says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: MediaType,
    pub compression: Compression,
    /// Lazy pulling reads e.g. `containerd.io/snapshot/stargz/toc.digest`.
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

/// Upper bounds against hostile manifests.
const MAX_LAYERS: usize = 1024;
const MAX_INDEX_ENTRIES: usize = 4096;

/// Parses a manifest, deciding its kind from the Content-Type the registry
/// sent or, failing that, from the document's own `mediaType`.
pub fn parse(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Manifest, RegistryError> {
    let invalid = |why: String| RegistryError::Invalid {
        what: what.to_string(),
        why,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let declared = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let media_type = match (content_type, declared.as_deref()) {
        // Registries answer "application/json" or "text/plain" for OCI
        // documents that omit mediaType; the body's shape decides then.
        (Some(ct), _) if is_known(ct) => ct.to_string(),
        (_, Some(d)) => d.to_string(),
        _ if value.get("manifests").is_some() => OCI_INDEX.to_string(),
        _ if value.get("layers").is_some() => OCI_MANIFEST.to_string(),
        _ => content_type.unwrap_or("unknown").to_string(),
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            check_limits(&value, "manifests", MAX_INDEX_ENTRIES, &invalid, |n| {
                format!("{n} index entries")
            })?;
            default_media_types(&mut value);
            let index: ImageIndex =
                serde_json::from_value(value).map_err(|e| invalid(format!("bad index ({e})")))?;
            let entries = index
                .manifests()
                .iter()
                .map(|d| Descriptor::from_oci(d.clone(), what))
                .collect::<Result<_, _>>()?;
            Ok(Manifest::Index(entries))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            check_limits(&value, "layers", MAX_LAYERS, &invalid, |n| {
                format!("{n} layers (at most {MAX_LAYERS})")
            })?;
            default_media_types(&mut value);
            let mut raw: OciImageManifest = serde_json::from_value(value)
                .map_err(|e| invalid(format!("bad image manifest ({e})")))?;
            if let Some(m) = raw.media_type().as_ref().map(AsRef::<str>::as_ref) {
                if m != media_type && is_known(m) {
                    return Err(invalid(format!(
                        "Content-Type {media_type} but mediaType {m}"
                    )));
                }
            }
            let config = Descriptor::from_oci(raw.config().clone(), what)?;
            if !config.media_type().is_some_and(is_config) {
                return Err(RegistryError::UnsupportedMediaType {
                    what: format!("the config of {what}"),
                    media_type: config.media_type_str().to_string(),
                });
            }
            let layers = std::mem::take(raw.layers_mut())
                .into_iter()
                .map(|d| layer(d, what))
                .collect::<Result<_, _>>()?;
            Ok(Manifest::Image(ImageManifest {
                media_type,
                config,
                layers,
            }))
        }
        other => Err(RegistryError::UnsupportedMediaType {
            what: what.to_string(),
            media_type: other.to_string(),
        }),
    }
}

/// The bounds checked on the raw JSON, before oci-spec builds a
/// descriptor for each of a hostile document's entries: schemaVersion 2
/// (a missing or non-numeric one is left to the typed parse to name) and
/// at most `max` entries under `list`.
fn check_limits(
    document: &serde_json::Value,
    list: &str,
    max: usize,
    invalid: &impl Fn(String) -> RegistryError,
    too_many: impl FnOnce(usize) -> String,
) -> Result<(), RegistryError> {
    if let Some(version) = document.get("schemaVersion").and_then(|v| v.as_u64()) {
        if version != 2 {
            return Err(invalid(format!("schemaVersion {version} (expected 2)")));
        }
    }
    match document.get(list).and_then(|l| l.as_array()) {
        Some(entries) if entries.len() > max => Err(invalid(too_many(entries.len()))),
        _ => Ok(()),
    }
}

fn is_config(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageConfig => true,
        MediaType::Other(other) => other == DOCKER_CONFIG,
        _ => false,
    }
}

fn is_known(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST
    )
}

/// How a layer's media type says it is compressed; None for a type that
/// is no layer cvmd can unpack.
fn compression(media_type: &MediaType) -> Option<Compression> {
    Some(match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
        MediaType::Other(other) => match other.as_str() {
            // Docker's uncompressed layer type: not in the schema 2 spec, but
            // written by some tools and accepted by containerd.
            DOCKER_LAYER => Compression::None,
            DOCKER_LAYER_GZIP => Compression::Gzip,
            _ => return None,
        },
        _ => return None,
    })
}

fn layer(d: OciDescriptor, what: &str) -> Result<Layer, RegistryError> {
    let d = Descriptor::from_oci(d, what)?;
    let Some(compression) = d.media_type().and_then(compression) else {
        return Err(RegistryError::UnsupportedMediaType {
            what: format!("layer {} of {what}", d.digest),
            media_type: d.media_type_str().to_string(),
        });
    };
    Ok(Layer {
        size: d.size(),
        media_type: d.oci.media_type().clone(),
        compression,
        annotations: d.annotations().cloned().unwrap_or_default(),
        digest: d.digest,
    })
}

/// The index entry for `wanted`, or an error listing what the index has.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
    reference: &str,
) -> Result<&'a Descriptor, RegistryError> {
    let candidates = || {
        entries
            .iter()
            .filter(|d| d.media_type().is_none_or(|m| is_known(m.as_ref())))
            .filter(|d| d.platform().is_some_and(|p| wanted.matches(p)))
    };
    // An exact variant match beats a match that ignored the variant.
    candidates()
        .find(|d| d.platform().map(|p| p.variant()) == Some(wanted.variant()))
        .or_else(|| candidates().next())
        .ok_or_else(|| {
            let mut available: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform())
                .map(platform_text)
                .filter(|p| p != "unknown/unknown")
                .collect();
            available.dedup();
            RegistryError::NoPlatform {
                reference: reference.to_string(),
                wanted: wanted.to_string(),
                available: if available.is_empty() {
                    "no platforms".into()
                } else {
                    available.join(", ")
                },
            }
        })
}

/// The parts of an image config cvmd needs now; the rest is read where it
/// is used (the bundle).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfigHead {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Reads and checks an image config against its manifest.
pub fn parse_config(
    bytes: &[u8],
    manifest: &ImageManifest,
    what: &str,
) -> Result<ImageConfigHead, RegistryError> {
    let config: ImageConfigHead =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Invalid {
            what: format!("image config of {what}"),
            why: e.to_string(),
        })?;
    if config.rootfs.kind != "layers" || config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Invalid {
            what: format!("image config of {what}"),
            why: format!(
                "it lists {} diff_ids of type {:?} for {} layers",
                config.rootfs.diff_ids.len(),
                config.rootfs.kind,
                manifest.layers.len()
            ),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
