//! In-memory layers, images and indexes (OCI and Docker schema 2).
//!
//! Pushing lives in [`super::push`]; re-exported here for convenience.

pub use super::push::{push, PushedImage, PushedIndex, RegistryClient};

use super::sha256_digest;
use std::io::Write;
use tar::{EntryType, Header};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Not in the Docker spec, but seen in the wild for uncompressed layers.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Every manifest type, for `Accept`; distribution 2.8 answers 404 for an OCI
/// manifest fetched by tag without its type in `Accept`, and rewrites Docker
/// schema 2 to schema 1.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// Two gzip members back to back (as pigz/`cat a.gz b.gz` make); a reader
    /// that stops after the first member loses the tail of the tar.
    MultiGzip,
    Zstd,
}

/// A finished layer blob.
#[derive(Clone, Debug)]
pub struct Layer {
    pub data: Vec<u8>,
    /// Digest of `data` (the blob digest).
    pub digest: String,
    /// Digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: String,
    pub size: u64,
    pub compression: Compression,
    /// Overrides the media type the manifest names (defaults follow format
    /// and compression).
    pub media_type: Option<String>,
}

impl Layer {
    /// Wraps an already-built tar stream (possibly malformed on purpose).
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = sha256_digest(&tar);
        let data = compress(&tar, compression);
        Layer {
            digest: sha256_digest(&data),
            size: data.len() as u64,
            data,
            diff_id,
            compression,
            media_type: None,
        }
    }

    /// Blob bytes used verbatim; `diff_id` is given because it cannot be
    /// computed for arbitrary bytes (e.g. a truncated gzip).
    pub fn from_blob(data: Vec<u8>, diff_id: &str, compression: Compression) -> Layer {
        Layer {
            digest: sha256_digest(&data),
            size: data.len() as u64,
            data,
            diff_id: diff_id.to_string(),
            compression,
            media_type: None,
        }
    }

    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.media_type = Some(media_type.to_string());
        self
    }

    pub fn media_type_for(&self, format: Format) -> String {
        if let Some(m) = &self.media_type {
            return m.clone();
        }
        match (format, self.compression) {
            (Format::Oci, Compression::None) => OCI_LAYER,
            (Format::Oci, Compression::Gzip | Compression::MultiGzip) => OCI_LAYER_GZIP,
            (_, Compression::Zstd) => OCI_LAYER_ZSTD,
            (Format::Docker, Compression::None) => DOCKER_LAYER,
            (Format::Docker, _) => DOCKER_LAYER_GZIP,
        }
        .to_string()
    }

    /// One file `path` of `mb` MiB of incompressible bytes from `seed`.
    pub fn random(path: &str, mb: usize, seed: u64, compression: Compression) -> Layer {
        LayerBuilder::new()
            .file(path, &pseudo_random(mb * 1024 * 1024, seed), 0o644)
            .build(compression)
    }
}

/// Deterministic incompressible bytes (splitmix64).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed;
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    fn gz(data: &[u8]) -> Vec<u8> {
        // Fast level: big random layers would otherwise dominate test time.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => gz(tar),
        Compression::MultiGzip => {
            // Split on a 512-byte block boundary in the middle.
            let mid = (tar.len() / 2) / 512 * 512;
            let mut out = gz(&tar[..mid]);
            out.extend(gz(&tar[mid..]));
            out
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// Builds a tar layer entry by entry. Owner and mtime apply to entries added
/// after they are set.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
    mtime: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        }
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, secs: u64) -> Self {
        self.mtime = secs;
        self
    }

    fn header(&self, kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h
    }

    fn append(mut self, mut h: Header, path: &str, data: &[u8]) -> Self {
        self.tar
            .append_data(&mut h, path, data)
            .unwrap_or_else(|e| panic!("tar append {path}: {e}"));
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        let h = self.header(EntryType::Regular, mode, data.len() as u64);
        self.append(h, path, data)
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        let h = self.header(EntryType::Directory, mode, 0);
        self.append(h, path, &[])
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = self.header(EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("tar symlink {path}: {e}"));
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = self.header(EntryType::Link, 0o644, 0);
        self.tar
            .append_link(&mut h, path, target)
            .unwrap_or_else(|e| panic!("tar hardlink {path}: {e}"));
        self
    }

    /// `dir/name` becomes the whiteout `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> Self {
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        let h = self.header(EntryType::Regular, 0o644, 0);
        self.append(h, &wh, &[])
    }

    /// Opaque marker `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> Self {
        let p = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        let h = self.header(EntryType::Regular, 0o644, 0);
        self.append(h, &p, &[])
    }

    fn device(self, kind: EntryType, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        let mut h = self.header(kind, mode, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.append(h, path, &[])
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        self.device(EntryType::Char, path, major, minor, mode)
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        self.device(EntryType::Block, path, major, minor, mode)
    }

    pub fn fifo(self, path: &str, mode: u32) -> Self {
        let h = self.header(EntryType::Fifo, mode, 0);
        self.append(h, path, &[])
    }

    /// Regular file preceded by a PAX header carrying `SCHILY.xattr.<name>`
    /// records (how GNU tar and Docker store xattrs).
    pub fn file_with_xattrs(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        xattrs: &[(&str, &[u8])],
    ) -> Self {
        let records: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.to_vec()))
            .collect();
        self = self.pax(&records);
        self.file(path, data, mode)
    }

    /// A PAX extended header (`typeflag 'x'`) applying to the next entry.
    pub fn pax(mut self, records: &[(String, Vec<u8>)]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            // "LEN key=value\n" where LEN counts its own digits.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_mtime(self.mtime);
        set_name_bytes(&mut h, b"././@PaxHeader");
        h.set_cksum();
        self.tar.append(&h, &body[..]).expect("pax header");
        self
    }

    /// An entry written without any validation: `name` goes into the header
    /// bytes as is (a GNU long-name entry precedes it when over 100 bytes),
    /// then `header_fn` may change anything; the checksum is fixed up last.
    /// For hostile names like `../x`, `/etc/x` or `a/../../b`.
    pub fn raw_entry(
        mut self,
        name: &[u8],
        header_fn: impl FnOnce(&mut Header),
        data: &[u8],
    ) -> Self {
        let mut h = self.header(EntryType::Regular, 0o644, data.len() as u64);
        if name.len() > 100 {
            let mut long = Header::new_gnu();
            long.set_entry_type(EntryType::GNULongName);
            long.set_mode(0o644);
            let mut payload = name.to_vec();
            payload.push(0);
            long.set_size(payload.len() as u64);
            set_name_bytes(&mut long, b"././@LongLink");
            long.set_cksum();
            self.tar.append(&long, &payload[..]).expect("long name");
            set_name_bytes(&mut h, &name[..100]);
        } else {
            set_name_bytes(&mut h, name);
        }
        header_fn(&mut h);
        h.set_cksum();
        self.tar.append(&h, data).expect("raw entry");
        self
    }

    /// Raw bytes spliced into the tar stream (e.g. garbage or a partial
    /// header).
    pub fn raw_bytes(mut self, bytes: &[u8]) -> Self {
        self.tar.get_mut().extend_from_slice(bytes);
        self
    }

    /// The finished tar stream (with the two zero end blocks).
    pub fn into_tar(self) -> Vec<u8> {
        self.tar.into_inner().expect("finish tar")
    }

    pub fn build(self, compression: Compression) -> Layer {
        Layer::from_tar(self.into_tar(), compression)
    }
}

fn set_name_bytes(h: &mut Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    pub fn linux_amd64() -> Platform {
        Self::new("linux", "amd64", None)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"os": self.os, "architecture": self.architecture});
        if let Some(var) = &self.variant {
            v["variant"] = var.clone().into();
        }
        v
    }
}

/// Image config fields; `None` leaves the key out.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: Option<Vec<(String, String)>>,
}

type JsonEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

pub struct ImageBuilder {
    format: Format,
    platform: Platform,
    config: ContainerConfig,
    layers: Vec<Layer>,
    config_edit: Option<JsonEdit>,
    manifest_edit: Option<JsonEdit>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl ImageBuilder {
    pub fn new(format: Format) -> Self {
        ImageBuilder {
            format,
            platform: Platform::linux_amd64(),
            config: ContainerConfig::default(),
            layers: Vec::new(),
            config_edit: None,
            manifest_edit: None,
        }
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }

    pub fn entrypoint(mut self, v: &[&str]) -> Self {
        self.config.entrypoint = Some(strings(v));
        self
    }

    pub fn cmd(mut self, v: &[&str]) -> Self {
        self.config.cmd = Some(strings(v));
        self
    }

    pub fn env(mut self, v: &[&str]) -> Self {
        self.config.env = Some(strings(v));
        self
    }

    pub fn working_dir(mut self, v: &str) -> Self {
        self.config.working_dir = Some(v.into());
        self
    }

    pub fn user(mut self, v: &str) -> Self {
        self.config.user = Some(v.into());
        self
    }

    pub fn stop_signal(mut self, v: &str) -> Self {
        self.config.stop_signal = Some(v.into());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.config
            .labels
            .get_or_insert_with(Vec::new)
            .push((k.into(), v.into()));
        self
    }

    /// Last word on the config JSON (for odd or hostile configs).
    pub fn edit_config(mut self, f: impl FnOnce(&mut serde_json::Value) + 'static) -> Self {
        self.config_edit = Some(Box::new(f));
        self
    }

    /// Last word on the manifest JSON (e.g. a foreign config media type).
    pub fn edit_manifest(mut self, f: impl FnOnce(&mut serde_json::Value) + 'static) -> Self {
        self.manifest_edit = Some(Box::new(f));
        self
    }

    pub fn build(self) -> Image {
        let c = &self.config;
        let mut cfg = serde_json::Map::new();
        if let Some(v) = &c.entrypoint {
            cfg.insert("Entrypoint".into(), v.clone().into());
        }
        if let Some(v) = &c.cmd {
            cfg.insert("Cmd".into(), v.clone().into());
        }
        if let Some(v) = &c.env {
            cfg.insert("Env".into(), v.clone().into());
        }
        if let Some(v) = &c.working_dir {
            cfg.insert("WorkingDir".into(), v.clone().into());
        }
        if let Some(v) = &c.user {
            cfg.insert("User".into(), v.clone().into());
        }
        if let Some(v) = &c.stop_signal {
            cfg.insert("StopSignal".into(), v.clone().into());
        }
        if let Some(v) = &c.labels {
            let m: serde_json::Map<String, serde_json::Value> = v
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            cfg.insert("Labels".into(), m.into());
        }
        let mut config = serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": cfg,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|_| serde_json::json!({"created_by": "cvmd test harness"})).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = v.clone().into();
        }
        if let Some(f) = self.config_edit {
            f(&mut config);
        }
        let config = serde_json::to_vec(&config).expect("config json");
        let config_digest = sha256_digest(&config);
        let (mt, cmt) = match self.format {
            Format::Oci => (OCI_MANIFEST, OCI_CONFIG),
            Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": config_digest, "size": config.len()},
            "layers": self.layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type_for(self.format),
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        if let Some(f) = self.manifest_edit {
            f(&mut manifest);
        }
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest json");
        Image {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            media_type: mt.to_string(),
            config_digest,
            config,
            layers: self.layers,
            platform: self.platform,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Layer>,
    pub platform: Platform,
}

impl Image {
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
}

pub struct IndexBuilder {
    format: Format,
    entries: Vec<(Image, Platform)>,
}

impl IndexBuilder {
    /// `Format::Oci` makes an OCI index, `Format::Docker` a manifest list.
    pub fn new(format: Format) -> Self {
        IndexBuilder {
            format,
            entries: Vec::new(),
        }
    }

    /// Adds `image` under the platform it was built for.
    pub fn image(self, image: Image) -> Self {
        let p = image.platform.clone();
        self.image_as(image, p)
    }

    /// Adds `image` claiming `platform` (which may disagree with its config).
    pub fn image_as(mut self, image: Image, platform: Platform) -> Self {
        self.entries.push((image, platform));
        self
    }

    pub fn build(self) -> Index {
        let mt = match self.format {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": self.entries.iter().map(|(img, p)| serde_json::json!({
                "mediaType": img.media_type,
                "digest": img.manifest_digest,
                "size": img.manifest.len(),
                "platform": p.to_json(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec_pretty(&manifest).expect("index json");
        Index {
            digest: sha256_digest(&manifest),
            manifest,
            media_type: mt.to_string(),
            images: self.entries.into_iter().map(|(i, _)| i).collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Index {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub digest: String,
    pub images: Vec<Image>,
}

/// A GNU-format sparse tar (`tar --format=gnu --sparse`, as the issue's
/// bomb was made) of one file `name` of `len` bytes, holding `data` at
/// `at` and holes elsewhere.
pub fn sparse_tar(name: &str, len: u64, at: u64, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join(name)).unwrap();
    f.set_len(len).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at)).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    drop(f);
    let out = std::process::Command::new("tar")
        .args(["--format=gnu", "--sparse", "-C"])
        .arg(dir.path())
        .args(["-cf", "-", name])
        .output()
        .expect("GNU tar");
    assert!(out.status.success(), "tar: {out:?}");
    assert!(out.stdout.len() < 1 << 20, "the tar itself is small");
    out.stdout
}
