//! Every refusal of `cvmd pull` is exit 1 and one line on stderr that says
//! what to do, never showing a password or token, and leaves nothing
//! unverified in the store.

use crate::common::cli::{small_image, SealedCvmd};
use crate::common::image::{
    Compression, Format, ImageBuilder, IndexBuilder, LayerBuilder, Platform, OCI_LAYER_GZIP,
};
use crate::common::prereq;
use crate::common::registry::push;
use crate::common::token::TokenConfig;
use crate::common::{block_on, sha256_digest, Registry};
use serde_json::json;

const USER: &str = "alice";
const PASS: &str = "pw-Zq81-never-shown";
const HINT: &str = "pass a pull secret with CVMD_PULL_SECRET (or CODER_IMAGE_PULL_SECRET): a path to a .dockerconfigjson file or the JSON itself";

fn tls_registry() -> Registry {
    let reg = Registry::tls_basic(USER, PASS).expect("registry");
    push(&reg, "team/app", "v1", &small_image(Format::Oci, 3));
    reg
}

fn ca(reg: &Registry) -> String {
    reg.ca_pem_path().unwrap().display().to_string()
}

#[test]
fn unauthorized_without_credentials_points_at_cvmd_pull_secret() {
    require!(prereq::registry());
    let reg = tls_registry();
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--extra-certs", &ca(&reg)],
    );
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: registry {} requires authentication (repository:team/app:pull) and no credentials were given for it: {HINT}",
            reg.host()
        )
    );
    assert!(cvmd.stored_blobs().is_empty(), "{:?}", cvmd.stored_blobs());
}

#[test]
fn unauthorized_on_a_private_repository_of_a_token_registry() {
    require!(prereq::registry());
    let reg = Registry::token(TokenConfig::new().user(USER, PASS)).expect("registry");
    push(&reg, "priv/img", "v1", &small_image(Format::Oci, 4));
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &format!("{}/priv/img:v1", reg.host()),
        &["--insecure-registries", &reg.host()],
    );
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: registry {} requires authentication (repository:priv/img:pull) and no credentials were given for it: {HINT}",
            reg.host()
        )
    );
}

#[test]
fn wrong_password_in_config_json_names_the_file_and_hides_the_password() {
    require!(prereq::registry());
    let reg = tls_registry();
    let cvmd = SealedCvmd::new();
    let wrong = "wrong-Xy77-secret";
    cvmd.write_docker_config(
        &json!({"auths": {reg.host(): {"username": USER, "password": wrong}}}),
    );
    let run = cvmd.pull(
        &format!("{}/team/app:v1", reg.host()),
        &["--extra-certs", &ca(&reg)],
    );
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: registry {} refused the credentials from {} (repository:team/app:pull): check the user name and password or token in it",
            reg.host(),
            cvmd.docker_config_path().display()
        )
    );
    run.assert_never_shows(wrong);
}

#[test]
fn wrong_password_in_pull_secret_at_the_token_endpoint_names_the_pull_secret() {
    require!(prereq::registry());
    let reg = Registry::token(TokenConfig::new().user(USER, PASS)).expect("registry");
    push(&reg, "priv/img", "v1", &small_image(Format::Oci, 5));
    let wrong = "wrong-Tk42-secret";
    let cvmd = SealedCvmd::new();
    let secret = json!({"auths": {reg.host(): {"username": USER, "password": wrong}}});
    let run = cvmd.pull(
        &format!("{}/priv/img:v1", reg.host()),
        &[
            "--insecure-registries",
            &reg.host(),
            "--pull-secret",
            &secret.to_string(),
        ],
    );
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: registry {} refused the credentials from pull secret (repository:priv/img:pull): check the user name and password or token in it",
            reg.host()
        )
    );
    run.assert_never_shows(wrong);
}

#[test]
fn a_malformed_pull_secret_is_refused_without_echoing_it() {
    let cvmd = SealedCvmd::new();
    let broken = r#"{"auths": {"r.io": {"auth": "c2VjcmV0LUhrOTk="}}"#;
    let run = cvmd.pull("r.io/a/b:v1", &["--pull-secret", broken]);
    let line = run.error_line();
    assert!(
        line.starts_with("cvmd: error: pull secret: not valid JSON (line 1, column "),
        "{line}"
    );
    run.assert_never_shows("c2VjcmV0LUhrOTk=");
}

#[test]
fn tag_and_repository_not_found() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    push(&reg, "team/app", "v1", &small_image(Format::Oci, 6));
    let h = reg.host();
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(
        &format!("{h}/team/app:nope"),
        &["--insecure-registries", &h],
    );
    assert_eq!(
        run.error_line(),
        format!("cvmd: error: image {h}/team/app:nope not found: repository team/app has no manifest \"nope\"")
    );
    let run = cvmd.pull(&format!("{h}/no/such:v1"), &["--insecure-registries", &h]);
    assert_eq!(
        run.error_line(),
        format!("cvmd: error: image {h}/no/such:v1 not found: registry {h} has no repository no/such (or it is private: {HINT})")
    );
    let absent = sha256_digest(b"no such manifest");
    let run = cvmd.pull(
        &format!("{h}/team/app@{absent}"),
        &["--insecure-registries", &h],
    );
    assert_eq!(
        run.error_line(),
        format!("cvmd: error: image {h}/team/app@{absent} not found: repository team/app has no manifest \"{absent}\"")
    );
    assert!(cvmd.stored_blobs().is_empty());
}

#[test]
fn unknown_host() {
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull("nonexistent.invalid:5000/x", &[]);
    assert_eq!(
        run.error_line(),
        "cvmd: error: cannot resolve registry host nonexistent.invalid:5000: check the image reference and this machine's DNS"
    );
}

#[test]
fn tls_unknown_authority_names_cvmd_extra_certs() {
    require!(prereq::registry());
    let reg = tls_registry();
    let cvmd = SealedCvmd::new();
    cvmd.write_docker_config(&json!({"auths": {reg.host(): {"username": USER, "password": PASS}}}));
    let run = cvmd.pull(&format!("{}/team/app:v1", reg.host()), &[]);
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: TLS: the certificate of registry {} is signed by an unknown authority: add its CA with CVMD_EXTRA_CERTS (or CODER_EXTRA_CERTS_PATH), or list the registry in CVMD_INSECURE_REGISTRIES if it speaks plain HTTP",
            reg.host()
        )
    );
    run.assert_never_shows(PASS);
}

#[test]
fn plain_http_registry_not_listed_as_insecure() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(&format!("{}/team/app:v1", reg.host()), &[]);
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: registry {} does not speak HTTPS (plain HTTP?): list it in CVMD_INSECURE_REGISTRIES to allow plain HTTP",
            reg.host()
        )
    );
}

#[test]
fn pinned_digest_with_other_content_is_refused_and_nothing_stored() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let img = small_image(Format::Oci, 7);
    push(&reg, "team/app", "v1", &img);
    // Change the manifest the registry holds on disk, keeping its length:
    // the registry then serves other bytes under the pinned digest.
    let hex = img.manifest_digest.trim_start_matches("sha256:");
    let data = reg
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let original = std::fs::read(&data).expect("manifest in the registry's storage");
    let tampered = String::from_utf8(original.clone())
        .unwrap()
        .replacen("\n  ", "\n\t ", 1);
    assert_eq!(tampered.len(), original.len());
    std::fs::write(&data, &tampered).unwrap();
    let actual = sha256_digest(tampered.as_bytes());

    let h = reg.host();
    let cvmd = SealedCvmd::new();
    let pinned = format!("{h}/team/app@{}", img.manifest_digest);
    let run = cvmd.pull(&pinned, &["--insecure-registries", &h]);
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: manifest of {pinned}: the registry sent content with digest {actual}, expected {}; nothing was stored",
            img.manifest_digest
        )
    );
    assert!(cvmd.stored_blobs().is_empty(), "{:?}", cvmd.stored_blobs());
    assert!(cvmd.partials().is_empty());
}

#[test]
fn unsupported_layer_media_type_and_helm_config_are_refused() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let h = reg.host();
    let odd_type = "application/vnd.example.unknown.layer.v1";
    let layer = LayerBuilder::new()
        .file("x", b"x", 0o644)
        .build(Compression::Gzip)
        .with_media_type(odd_type);
    let odd = ImageBuilder::new(Format::Oci).layer(layer.clone()).build();
    push(&reg, "team/odd", "v1", &odd);
    let helm = ImageBuilder::new(Format::Oci)
        .layer(
            LayerBuilder::new()
                .file("chart", b"c", 0o644)
                .build(Compression::Gzip)
                .with_media_type(OCI_LAYER_GZIP),
        )
        .edit_manifest(|m| {
            m["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json".into();
        })
        .build();
    push(&reg, "charts/helm", "v1", &helm);

    let cvmd = SealedCvmd::new();
    let run = cvmd.pull(&format!("{h}/team/odd:v1"), &["--insecure-registries", &h]);
    assert_eq!(
        run.error_line(),
        format!(
            "cvmd: error: unsupported media type \"{odd_type}\" for layer {} of {h}/team/odd:v1",
            layer.digest
        )
    );
    let run = cvmd.pull(
        &format!("{h}/charts/helm:v1"),
        &["--insecure-registries", &h],
    );
    assert_eq!(
        run.error_line(),
        format!("cvmd: error: unsupported media type \"application/vnd.cncf.helm.config.v1+json\" for the config of {h}/charts/helm:v1")
    );
    assert!(cvmd.stored_blobs().is_empty(), "{:?}", cvmd.stored_blobs());
}

#[test]
fn no_manifest_for_the_platform_lists_what_there_is_and_platform_selects() {
    require!(prereq::registry());
    let reg = Registry::plain().unwrap();
    let h = reg.host();
    let arm64 = ImageBuilder::new(Format::Oci)
        .platform(Platform::new("linux", "arm64", Some("v8")))
        .layer(
            LayerBuilder::new()
                .file("arch", b"arm64", 0o644)
                .build(Compression::Gzip),
        )
        .build();
    let armv7 = ImageBuilder::new(Format::Oci)
        .platform(Platform::new("linux", "arm", Some("v7")))
        .layer(
            LayerBuilder::new()
                .file("arch", b"armv7", 0o644)
                .build(Compression::Gzip),
        )
        .build();
    let index = IndexBuilder::new(Format::Oci)
        .image(arm64.clone())
        .image(armv7)
        .build();
    let c = reg.client();
    block_on(c.push_index("multi/img", "v1", &index)).unwrap();

    let cvmd = SealedCvmd::new();
    let image = format!("{h}/multi/img:v1");
    let run = cvmd.pull(
        &image,
        &["--insecure-registries", &h, "--platform", "linux/amd64"],
    );
    assert_eq!(
        run.error_line(),
        format!("cvmd: error: image {image} has no manifest for platform linux/amd64 (it has: linux/arm64/v8, linux/arm/v7); set CVMD_PLATFORM to one of those")
    );

    let run = cvmd.pull(
        &image,
        &["--insecure-registries", &h, "--platform", "linux/arm64/v8"],
    );
    run.assert_ok();
    assert_eq!(run.stdout, format!("{image}@{}\n", arm64.manifest_digest));
    cvmd.assert_stored(&arm64, &arm64.manifest_digest);
    assert!(cvmd.has_blob(&index.digest));
}
