//! Proves each harness piece against the real docker-registry.

use crate::common::image::{
    Compression, Format, ImageBuilder, IndexBuilder, Layer, LayerBuilder, Platform,
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
use crate::common::prereq;
use crate::common::proxy::FaultProxy;
use crate::common::push::{parse_challenge, RegistryClient};
use crate::common::token::{Grant, TokenConfig};
use crate::common::{cred_helper, http_client, sha256_digest, Registry};
use base64::Engine;
use futures_util::StreamExt;
use std::io::Read;
use std::time::{Duration, Instant};

fn busy_layer(c: Compression) -> Layer {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"cvmd\n", 0o644)
        .owner(1000, 1000)
        .mtime(1_600_000_000)
        .file("home/u/.profile", b"export A=1\n", 0o600)
        .owner(0, 0)
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("etc/hostname2", "etc/hostname")
        .whiteout("var/gone")
        .opaque("opt")
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop0", 7, 0, 0o660)
        .fifo("run/fifo", 0o600)
        .file_with_xattrs(
            "bin/ping",
            b"ELF",
            0o755,
            &[("security.capability", &[1, 0, 0, 2][..]), ("user.k", b"v")],
        )
        .raw_entry(b"../escape", |_| {}, b"evil")
        .raw_entry(b"/abs/path", |_| {}, b"evil")
        .raw_entry(
            format!("{}/../../x", "d".repeat(120)).as_bytes(),
            |_| {},
            b"long",
        )
        .build(c)
}

fn sample_image(format: Format, platform: Platform, c: Compression) -> crate::common::image::Image {
    ImageBuilder::new(format)
        .platform(platform)
        .layer(busy_layer(c))
        .layer(
            LayerBuilder::new()
                .file("app/run", b"#!/bin/sh\n", 0o755)
                .build(c),
        )
        .entrypoint(&["/app/run"])
        .cmd(&["--flag"])
        .env(&["PATH=/usr/bin:/bin", "A=b"])
        .working_dir("/app")
        .user("1000:1000")
        .stop_signal("SIGRTMIN+3")
        .build()
}

#[test]
fn layer_contents_round_trip() {
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::MultiGzip,
        Compression::Zstd,
    ] {
        let l = busy_layer(c);
        assert_eq!(l.digest, sha256_digest(&l.data));
        let tar: Vec<u8> = match c {
            Compression::None => l.data.clone(),
            Compression::Gzip | Compression::MultiGzip => {
                let mut v = Vec::new();
                flate2::read::MultiGzDecoder::new(&l.data[..])
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            Compression::Zstd => zstd::decode_all(&l.data[..]).unwrap(),
        };
        assert_eq!(sha256_digest(&tar), l.diff_id, "{c:?}");
        if c == Compression::MultiGzip {
            // The second member is really there: a single-member reader
            // sees less than the whole tar.
            let mut v = Vec::new();
            let _ = flate2::read::GzDecoder::new(&l.data[..]).read_to_end(&mut v);
            assert!(v.len() < tar.len());
        }
        let mut ar = tar::Archive::new(&tar[..]);
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if name == "bin/ping" {
                let x: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|r| r.unwrap().key().unwrap().to_string())
                    .collect();
                assert_eq!(
                    x,
                    ["SCHILY.xattr.security.capability", "SCHILY.xattr.user.k"]
                );
            }
            if name == "home/u/.profile" {
                assert_eq!(e.header().uid().unwrap(), 1000);
                assert_eq!(e.header().mtime().unwrap(), 1_600_000_000);
            }
            if name == "dev/null" {
                assert_eq!(e.header().device_major().unwrap(), Some(1));
            }
            names.push(name);
        }
        for want in [
            "var/.wh.gone",
            "opt/.wh..wh..opq",
            "../escape",
            "/abs/path",
            "run/fifo",
            "bin/sh",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing in {names:?}"
            );
        }
        assert!(names
            .iter()
            .any(|n| n.ends_with("/../../x") && n.len() > 100));
    }
    let big = Layer::random("big.bin", 1, 7, Compression::Gzip);
    assert!(big.size > 1024 * 1024, "random data must not compress");
    assert_eq!(
        big.digest,
        Layer::random("big.bin", 1, 7, Compression::Gzip).digest
    );
}

#[tokio::test]
async fn plain_registry_images_and_indexes() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let client = reg.client();
    let oci = sample_image(Format::Oci, Platform::linux_amd64(), Compression::Gzip);
    let pushed = client.push_image("test/oci", "v1", &oci).await.unwrap();
    assert_eq!(pushed.manifest_digest, oci.manifest_digest);
    assert_eq!(pushed.layer_digests, oci.layer_digests());
    let (st, ct, body) = client.get_manifest("test/oci", "v1", None).await.unwrap();
    assert_eq!((st, ct.as_str()), (200, OCI_MANIFEST));
    assert_eq!(sha256_digest(&body), oci.manifest_digest);

    // distribution 2.8 hides OCI manifests from clients that don't accept them.
    let (st, _, _) = client
        .get_manifest("test/oci", "v1", Some(DOCKER_MANIFEST))
        .await
        .unwrap();
    assert_eq!(st, 404);

    let docker = sample_image(Format::Docker, Platform::linux_amd64(), Compression::Gzip);
    client
        .push_image("test/docker", "v1", &docker)
        .await
        .unwrap();
    let (st, ct, _) = client
        .get_manifest("test/docker", "v1", None)
        .await
        .unwrap();
    assert_eq!((st, ct.as_str()), (200, DOCKER_MANIFEST));

    let zstd = sample_image(Format::Oci, Platform::linux_amd64(), Compression::Zstd);
    client.push_image("test/zstd", "v1", &zstd).await.unwrap();

    let arm = Platform::new("linux", "arm64", Some("v8"));
    let idx = IndexBuilder::new(Format::Oci)
        .image(sample_image(
            Format::Oci,
            Platform::linux_amd64(),
            Compression::MultiGzip,
        ))
        .image(sample_image(Format::Oci, arm.clone(), Compression::None))
        .build();
    let p = client
        .push_index("test/index", "multi", &idx)
        .await
        .unwrap();
    let (st, ct, body) = client
        .get_manifest("test/index", "multi", None)
        .await
        .unwrap();
    assert_eq!(
        (st, ct.as_str(), p.index_digest),
        (200, OCI_INDEX, sha256_digest(&body))
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["manifests"][1]["platform"]["variant"], "v8");
    // Children are fetchable by digest.
    let child = &p.images[1].manifest_digest;
    assert_eq!(
        client
            .get_manifest("test/index", child, None)
            .await
            .unwrap()
            .0,
        200
    );

    let list = IndexBuilder::new(Format::Docker)
        .image(sample_image(
            Format::Docker,
            Platform::linux_amd64(),
            Compression::Gzip,
        ))
        .image_as(
            sample_image(Format::Docker, arm, Compression::Gzip),
            Platform::new("linux", "arm", Some("v7")),
        )
        .build();
    client
        .push_index("test/list", "multi", &list)
        .await
        .unwrap();
    let (st, ct, _) = client
        .get_manifest("test/list", "multi", None)
        .await
        .unwrap();
    assert_eq!((st, ct.as_str()), (200, DOCKER_MANIFEST_LIST));

    // Raw pushes: an unregistered manifest type is refused by 2.8; an OCI
    // manifest naming an exotic config type is accepted.
    let err = client
        .push_manifest_raw("test/raw", "x", "application/x-bogus", b"{}")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let helm = ImageBuilder::new(Format::Oci)
        .layer(
            LayerBuilder::new()
                .file("a", b"a", 0o644)
                .build(Compression::Gzip),
        )
        .edit_manifest(|m| {
            m["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json".into();
        })
        .build();
    client.push_image("test/raw", "helm", &helm).await.unwrap();
    // A blob whose claimed digest is wrong is refused.
    let err = client
        .push_blob_as("test/raw", &sha256_digest(b"other"), b"data")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn tls_basic_registry() {
    require!(prereq::registry());
    let reg = Registry::tls_basic("alice", "s3cret").unwrap();
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    let ca = reg.ca_pem_path().unwrap();
    let http = http_client(Some(ca));
    let r = http.get(format!("{}/v2/", reg.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let ch = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch.scheme, "basic");

    let img = sample_image(Format::Oci, Platform::linux_amd64(), Compression::Gzip);
    crate::common::image::push(
        &reg.url(),
        "a/b",
        "latest",
        &img,
        Some(("alice", "s3cret")),
        Some(ca),
    )
    .await
    .unwrap();
    let r = http
        .get(format!("{}/v2/a/b/manifests/latest", reg.url()))
        .basic_auth("alice", Some("s3cret"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = RegistryClient::new(&reg.url(), Some(("alice", "nope")), Some(ca));
    assert_eq!(
        bad.get_manifest("a/b", "latest", None).await.unwrap().0,
        401
    );
    // The CA really is needed.
    assert!(http_client(None)
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .is_err());
}

async fn token_json(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn token_registry_dance() {
    require!(prereq::registry());
    let cfg = TokenConfig::new()
        .user("bob", "pw")
        .public_repo("pub/img")
        .expires_in(2)
        .enforce_expiry(true);
    let reg = Registry::token(cfg).unwrap();
    let ts = reg.token_server().unwrap();
    let client = reg.client();
    let img = sample_image(Format::Docker, Platform::linux_amd64(), Compression::Gzip);
    client.push_image("pub/img", "latest", &img).await.unwrap();
    client.push_image("priv/img", "latest", &img).await.unwrap();
    // One token for the whole push of each repo: the client reuses it.
    assert_eq!(ts.request_count(), 2, "{:?}", ts.requests());

    let http = http_client(None);
    let murl = |repo: &str| format!("{}/v2/{repo}/manifests/latest", reg.url());
    let r = http.get(murl("pub/img")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let ch = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch.scheme, "bearer");
    assert_eq!(ch.scope.as_deref(), Some("repository:pub/img:pull"));
    let realm = ch.realm.clone().unwrap();
    let service = ch.service.clone().unwrap();
    let q = |scope: &str| format!("{realm}?service={service}&scope={scope}");
    let get = |tok: String, repo: &str| {
        http.get(murl(repo))
            .bearer_auth(tok)
            .header("accept", DOCKER_MANIFEST)
            .send()
    };

    // Anonymous: pull on the public repo only.
    let v = token_json(http.get(q("repository:pub/img:pull")).send().await.unwrap()).await;
    assert_eq!(v["expires_in"], 2);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    let tok = v["token"].as_str().unwrap().to_string();
    assert_eq!(get(tok.clone(), "pub/img").await.unwrap().status(), 200);
    let v = token_json(
        http.get(q("repository:priv/img:pull"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let r = get(v["token"].as_str().unwrap().into(), "priv/img")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ch = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(ch.error.as_deref(), Some("insufficient_scope"));

    // Basic creds.
    let r = http
        .get(q("repository:priv/img:pull"))
        .basic_auth("bob", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v = token_json(
        http.get(q("repository:priv/img:pull"))
            .basic_auth("bob", Some("pw"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let tok2 = v["token"].as_str().unwrap().to_string();
    assert_eq!(get(tok2.clone(), "priv/img").await.unwrap().status(), 200);

    // The x5c chain is what distribution verifies.
    let hdr = tok2.split('.').next().unwrap();
    let hdr: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(hdr)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hdr["x5c"].as_array().unwrap().len(), 2);

    // OAuth2 password grant with a refresh token, then the refresh grant.
    let form = |body: String| {
        http.post(&realm)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let v = token_json(
        form(format!(
            "grant_type=password&username=bob&password=pw&service={service}&client_id=cvmd&access_type=offline&scope=repository%3Apriv%2Fimg%3Apull"
        ))
        .await
        .unwrap(),
    )
    .await;
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert!(v["access_token"].is_string());
    let r = form("grant_type=password&username=bob&password=bad".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let before = ts.request_count();
    let v = token_json(
        form(format!(
            "grant_type=refresh_token&refresh_token={refresh}&service={service}&client_id=cvmd&scope=repository%3Apriv%2Fimg%3Apull"
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(ts.request_count(), before + 1);
    assert!(v.get("refresh_token").is_none());
    let tok3 = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(tok3, "priv/img").await.unwrap().status(), 200);
    assert!(ts
        .requests()
        .iter()
        .any(|r| r.grant == Grant::RefreshToken("bob".into())));
    let r = form("grant_type=refresh_token&refresh_token=nope".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // enforce_expiry: the registry really rejects the token after 2 s.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(tok2, "priv/img").await.unwrap().status(), 401);
}

#[tokio::test]
async fn token_registry_over_tls() {
    require!(prereq::registry());
    let reg = Registry::token(TokenConfig::new().user("u", "p").registry_tls(true)).unwrap();
    assert!(reg.url().starts_with("https://"));
    let client = reg.client();
    let img = sample_image(Format::Oci, Platform::linux_amd64(), Compression::Gzip);
    client.push_image("x/y", "t", &img).await.unwrap();
    assert_eq!(client.get_manifest("x/y", "t", None).await.unwrap().0, 200);
}

#[tokio::test]
async fn fault_proxy_knobs() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let proxy = FaultProxy::start(&reg.url());
    let layer = Layer::random("big.bin", 1, 42, Compression::None);
    let img = ImageBuilder::new(Format::Oci).layer(layer.clone()).build();
    // Pushing through the proxy proves uploads (POST, PUT to Location) pass.
    let via = RegistryClient::new(&proxy.url(), None, None);
    via.push_image("p/q", "v", &img).await.unwrap();
    assert!(proxy.requests().iter().any(|r| r.method == "PUT"));

    let http = http_client(None);
    let url = format!("{}/v2/p/q/blobs/{}", proxy.url(), layer.digest);
    let full = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_digest(&full), layer.digest);
    assert_eq!(proxy.blob_gets(&layer.digest), 1);

    proxy.fail_blob_gets_with(503, 1);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 503);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);

    proxy.cut_blob_after(100_000, 1);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.content_length(), Some(layer.size));
    let mut got = 0;
    let mut errored = false;
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => got += c.len(),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(errored, "cut must surface as an error, got {got} bytes");
    assert_eq!(got, 100_000);

    proxy.corrupt_blob_bytes(1);
    let bad = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bad.len(), full.len());
    assert_ne!(sha256_digest(&bad), layer.digest);

    assert!(!proxy.saw_range());
    let r = http
        .get(&url)
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &full[1000..]);
    assert!(proxy.saw_range());

    proxy.throttle_blobs(2 * 1024 * 1024);
    let t = Instant::now();
    http.get(&url).send().await.unwrap().bytes().await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    proxy.throttle_blobs(0);
    assert_eq!(proxy.blob_gets(&layer.digest), 7);
}

#[test]
fn credential_helper_script() {
    let dir = tempfile::tempdir().unwrap();
    let p = cred_helper(dir.path(), "fake", "127.0.0.1:5000", "u", "tok'en");
    let run = |input: &str| {
        let mut c = std::process::Command::new(&p)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run("https://127.0.0.1:5000\n");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["Username"].as_str(), v["Secret"].as_str()),
        (Some("u"), Some("tok'en"))
    );
    let out = run("other.example");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("credentials not found in native keychain")
    );
    assert_eq!(
        crate::common::cred::cred_helper_calls(dir.path(), "fake").len(),
        2
    );
}
