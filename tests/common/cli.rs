//! Running the real `cvmd` binary in a sealed environment: its own HOME,
//! DOCKER_CONFIG and cache dir, and no variable of the machine's except
//! PATH, so the machine's real docker config or `CVMD_*` settings never leak
//! into a test.

use super::image::Image;
use super::sha256_digest;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The real `cvmd` with a temp HOME (and DOCKER_CONFIG, cache dir) of its
/// own; each run gets only PATH from the machine's environment.
pub struct SealedCvmd {
    bin: PathBuf,
    /// HOME; `DOCKER_CONFIG` is `<home>/.docker`.
    pub home: tempfile::TempDir,
    envs: Vec<(String, String)>,
    path_prefix: Option<PathBuf>,
}

/// What a finished `cvmd` run left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "cvmd failed:\n{self}");
        self
    }

    /// The single `cvmd: error: ...` line, which must be the last line of
    /// stderr, after asserting exit code 1.
    pub fn error_line(&self) -> String {
        assert_eq!(self.code, Some(1), "expected exit 1:\n{self}");
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("cvmd: error: "))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{self}");
        assert_eq!(
            self.stderr.lines().last(),
            Some(errors[0]),
            "the error line must come last:\n{self}"
        );
        errors[0].to_string()
    }

    /// Asserts `secret` appears nowhere in what cvmd printed.
    pub fn assert_never_shows(&self, secret: &str) {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "cvmd printed the secret {secret:?}:\n{self}"
        );
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl SealedCvmd {
    pub fn new() -> SealedCvmd {
        let home = tempfile::Builder::new()
            .prefix("cvmd-home-")
            .tempdir()
            .expect("temp home");
        std::fs::create_dir_all(home.path().join(".docker")).expect("mkdir .docker");
        SealedCvmd {
            bin: super::cvmd_bin(),
            home,
            envs: Vec::new(),
            path_prefix: None,
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    pub fn docker_config_path(&self) -> PathBuf {
        self.home.path().join(".docker").join("config.json")
    }

    pub fn write_docker_config(&self, json: &serde_json::Value) {
        std::fs::write(self.docker_config_path(), json.to_string()).expect("write config.json");
    }

    /// A file under the temp home (for pull secrets and CA folders).
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.home.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write file");
        p
    }

    pub fn env(&mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.envs.push((
            key.to_string(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }

    /// Puts `dir` first on the PATH cvmd sees (for credential helpers).
    pub fn path_prefix(&mut self, dir: &Path) -> &mut Self {
        self.path_prefix = Some(dir.to_path_buf());
        self
    }

    /// `cvmd --cache-dir <cache> ARGS...` with the sealed environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let path = match &self.path_prefix {
            Some(p) => format!("{}:{path}", p.display()),
            None => path,
        };
        c.env_clear()
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("DOCKER_CONFIG", self.home.path().join(".docker"))
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run cvmd");
        to_run(out)
    }

    /// `cvmd pull IMAGE ARGS...`
    pub fn pull(&self, image: &str, args: &[&str]) -> Run {
        let mut all = vec!["pull", image];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Starts `cvmd pull` in the background, output piped.
    pub fn spawn_pull(&self, image: &str, args: &[&str]) -> Child {
        let mut all = vec!["pull", image];
        all.extend_from_slice(args);
        self.command(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cvmd")
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.cache_dir(), digest)
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Names in `<cache>/blobs/sha256/` (empty if the folder is missing).
    pub fn stored_blobs(&self) -> Vec<String> {
        names(&self.cache_dir().join("blobs").join("sha256"))
    }

    /// `<cache>/ingest/*.partial` files.
    pub fn partials(&self) -> Vec<PathBuf> {
        let dir = self.cache_dir().join("ingest");
        names(&dir)
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .map(|n| dir.join(n))
            .collect()
    }

    /// Bytes in all partial files together.
    pub fn partial_bytes(&self) -> u64 {
        self.partials()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Asserts the manifest `manifest_digest`, the config and every layer of
    /// `image` are in the store, each file hashing to its name, and no
    /// partial download is left behind.
    pub fn assert_stored(&self, image: &Image, manifest_digest: &str) {
        let mut want = vec![manifest_digest.to_string(), image.config_digest.clone()];
        want.extend(image.layer_digests());
        for d in want {
            let p = self.blob_path(&d);
            let data = std::fs::read(&p)
                .unwrap_or_else(|e| panic!("{d} not in the store ({}): {e}", p.display()));
            assert_eq!(
                sha256_digest(&data),
                d,
                "{} holds other content",
                p.display()
            );
        }
        assert!(self.partials().is_empty(), "left: {:?}", self.partials());
    }
}

pub fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    cache.join("blobs").join("sha256").join(hex)
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A small image (two layers of a few KiB, gzip) that differs per `seed`.
pub fn small_image(format: super::image::Format, seed: u64) -> Image {
    use super::image::{pseudo_random, Compression, ImageBuilder, LayerBuilder};
    ImageBuilder::new(format)
        .layer(
            LayerBuilder::new()
                .file("a.bin", &pseudo_random(8 << 10, seed), 0o644)
                .build(Compression::Gzip),
        )
        .layer(
            LayerBuilder::new()
                .file("b.bin", &pseudo_random(4 << 10, seed + 1), 0o644)
                .build(Compression::Gzip),
        )
        .build()
}
