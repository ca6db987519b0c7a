//! Pulling through containerd's transfer service (containerd 1.7 and
//! later): containerd resolves, fetches, verifies and unpacks the image
//! itself, asks cvmd for credentials over one stream and reports progress
//! over another. cvmd answers only for the image's own registry, and turns
//! the progress into its pull events, so Status and Events read as with
//! the other paths.

use std::collections::HashSet;

use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::tonic::{codec::Streaming, Code};
use containerd_client::types::transfer::{
    AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, Progress, RegistryResolver,
    UnpackConfiguration,
};
use containerd_client::{to_any, types::Platform as ApiPlatform};
use prost::{Message, Name};
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::PullRequest;
use super::{Containerd, ContainerdError, CONNECT_TIMEOUT, SNAPSHOTTER};
use crate::digest::Digest;
use crate::pull::{ProgressSink, PullEvent};
use crate::registry::credentials::Credential;
use crate::registry::manifest::Platform;
use crate::registry::Reference;

/// How long progress may still trickle in after the transfer returned.
const PROGRESS_DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

/// Why a pull cannot go through the transfer service (so `auto` uses the
/// content path): what it would need that the service cannot carry.
/// `resolver_options`: whether this containerd's transfer service takes a
/// hosts dir and a default scheme (2.0 and later).
pub(super) fn unsuitable(
    req: &PullRequest<'_>,
    reference: &Reference,
    credential: Option<&Credential>,
    resolver_options: bool,
) -> Option<String> {
    if !resolver_options {
        if req
            .image
            .registry
            .insecure_registries
            .contains(&reference.registry)
        {
            return Some(format!("{} is reached over plain HTTP and containerd 1.7's transfer service speaks only HTTPS", reference.registry));
        }
        if req.route.hosts_dir.is_some() {
            return Some("CVMD_CONTAINERD_HOSTS_DIR is set and containerd 1.7's transfer service does not read a hosts dir".into());
        }
    }
    // containerd 1.7 drops a header answer and sends no Authorization.
    if let Some(Credential::RegistryToken(_)) = credential {
        return Some(format!("the credential for {} is a bare registry token, which containerd's transfer service cannot use", reference.registry));
    }
    if !req.image.registry.extra_certs.is_empty() {
        return Some("CVMD_EXTRA_CERTS is set and containerd cannot be handed CA certificates (use CVMD_CONTAINERD_HOSTS_DIR for its own)".into());
    }
    if req.image.registry.mirrors.contains_key(&reference.registry) {
        return Some(format!(
            "CVMD_MIRRORS has mirrors for {} and containerd cannot be handed them (use CVMD_CONTAINERD_HOSTS_DIR for its own)",
            reference.registry
        ));
    }
    None
}

/// One stream registered with containerd's streaming service: what it
/// sends us, and where our answers go.
struct Stream {
    id: String,
    inbound: Streaming<Any>,
    outbound: mpsc::Sender<Any>,
}

impl Containerd {
    /// Pulls and unpacks `reference` through the transfer service, under
    /// `lease`. `Ok(false)`: this containerd has no transfer service.
    pub(super) async fn transfer_pull(
        &self,
        lease: &str,
        reference: &Reference,
        req: &PullRequest<'_>,
        credential: Option<&Credential>,
        progress: &dyn ProgressSink,
    ) -> Result<bool, ContainerdError> {
        let what = reference.to_string();
        let Some(mut progress_stream) = self.open_stream(lease, "progress").await? else {
            return Ok(false);
        };
        let Some(mut auth_stream) = self.open_stream(lease, "creds").await? else {
            return Ok(false);
        };

        let request = transfer_request(reference, req, &auth_stream.id, &progress_stream.id);
        let mut client = TransferClient::new(self.channel.clone());
        let call = client.transfer(self.req(request, Some(lease)));
        tokio::pin!(call);

        let mut tracker = Tracker::new(reference.clone(), req.image.platform.clone());
        let mut progress_open = true;
        let mut auth_open = true;
        let result = loop {
            tokio::select! {
                r = &mut call => break r,
                m = progress_stream.inbound.message(), if progress_open => match m {
                    Ok(Some(any)) => self.on_progress(&any, &mut tracker, progress).await,
                    _ => progress_open = false,
                },
                m = auth_stream.inbound.message(), if auth_open => match m {
                    Ok(Some(any)) => {
                        let answer = answer_auth(&any, reference, credential);
                        if auth_stream.outbound.send(to_any(&answer)).await.is_err() {
                            auth_open = false;
                        }
                    }
                    _ => auth_open = false,
                },
            }
        };
        match result {
            Ok(_) => {}
            Err(s) if s.code() == Code::Unimplemented => return Ok(false),
            // containerd 2 refuses a pull it has no unpack configuration
            // for (1.7 pulls and leaves it packed; the caller sees that).
            Err(s) if s.message().contains("no unpack platforms") => {
                return Err(ContainerdError::NotUnpacked {
                    image: what,
                    platform: req.image.platform.to_string(),
                })
            }
            Err(s) => {
                let e = self.failed(&format!("pulling {what} through its transfer service"))(s);
                return Err(match e {
                    ContainerdError::Call { why, .. } => ContainerdError::TransferPull {
                        image: what,
                        socket: self.socket.display().to_string(),
                        why,
                    },
                    other => other,
                });
            }
        }
        // Progress sent just before the call returned may still be on its way.
        while progress_open {
            match tokio::time::timeout(PROGRESS_DRAIN, progress_stream.inbound.message()).await {
                Ok(Ok(Some(any))) => self.on_progress(&any, &mut tracker, progress).await,
                _ => progress_open = false,
            }
        }
        tracker.finish(self, progress).await?;
        Ok(true)
    }

    /// Registers a stream named `purpose-<unique>` with containerd's
    /// streaming service (None: the service is not there).
    async fn open_stream(
        &self,
        lease: &str,
        purpose: &str,
    ) -> Result<Option<Stream>, ContainerdError> {
        let id = super::unique(purpose);
        let (outbound, rx) = mpsc::channel(16);
        outbound
            .send(to_any(&StreamInit { id: id.clone() }))
            .await
            .expect("the receiver is alive");
        let what = format!("opening stream {id}");
        let mut client = StreamingClient::new(self.channel.clone());
        let opened = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.stream(self.req(ReceiverStream::new(rx), Some(lease))),
        )
        .await
        .map_err(|_| self.gone(&what))?;
        let mut inbound = match opened {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => return Ok(None),
            Err(s) => return Err(self.failed(&what)(s)),
        };
        // containerd acknowledges once the stream is registered under `id`.
        match tokio::time::timeout(CONNECT_TIMEOUT, inbound.message()).await {
            Err(_) => Err(self.gone(&what)),
            Ok(Err(s)) if s.code() == Code::Unimplemented => Ok(None),
            Ok(Err(s)) => Err(self.failed(&what)(s)),
            Ok(Ok(None)) => Err(self.gone(&what)),
            Ok(Ok(Some(_))) => Ok(Some(Stream {
                id,
                inbound,
                outbound,
            })),
        }
    }

    fn gone(&self, what: &str) -> ContainerdError {
        ContainerdError::Gone {
            socket: self.socket.display().to_string(),
            what: what.to_string(),
            why: "no answer within 5 s".into(),
        }
    }

    async fn on_progress(&self, any: &Any, tracker: &mut Tracker, sink: &dyn ProgressSink) {
        let Some(p) = decode::<Progress>(any) else {
            return;
        };
        tracing::trace!(event = %p.event, name = %p.name, progress = p.progress, total = p.total, "containerd transfer progress");
        if let Some(event) = tracker.layer_event(&p) {
            if !tracker.resolved {
                if let Some(manifest) = p.parents.iter().find_map(|n| ref_key_digest(n, "manifest"))
                {
                    tracker.resolve(self, &manifest, sink).await;
                }
            }
            sink.event(event);
        }
    }
}

/// What containerd reported so far, turned into cvmd's pull events.
struct Tracker {
    reference: Reference,
    platform: Platform,
    started: std::time::Instant,
    resolved: bool,
    /// Layers seen started, and seen done.
    started_layers: HashSet<String>,
    done_layers: HashSet<String>,
}

impl Tracker {
    fn new(reference: Reference, platform: Platform) -> Self {
        Tracker {
            reference,
            platform,
            started: std::time::Instant::now(),
            resolved: false,
            started_layers: HashSet::new(),
            done_layers: HashSet::new(),
        }
    }

    /// The pull event for a layer's progress report (None for the
    /// manifest, the config, and events that say nothing new).
    fn layer_event(&mut self, p: &Progress) -> Option<PullEvent> {
        let desc = p.desc.as_ref()?;
        if !is_layer(&desc.media_type) {
            return None;
        }
        let digest: Digest = desc.digest.parse().ok()?;
        let key = desc.digest.clone();
        let size = u64::try_from(desc.size).unwrap_or(0);
        if self.done_layers.contains(&key) {
            return None;
        }
        match p.event.as_str() {
            // Queued in containerd; cvmd's "waiting" means another process
            // holds the download, which is not what this says.
            "waiting" => None,
            "already exists" => {
                self.done_layers.insert(key);
                Some(PullEvent::LayerDone {
                    digest,
                    size,
                    cached: true,
                })
            }
            "complete" => {
                self.done_layers.insert(key);
                Some(PullEvent::LayerDone {
                    digest,
                    size,
                    cached: false,
                })
            }
            // Every other event carries bytes moved ("downloading" today).
            _ if p.total > 0 => {
                let done = u64::try_from(p.progress).unwrap_or(0);
                let total = u64::try_from(p.total).unwrap_or(0);
                if self.started_layers.insert(key) {
                    Some(PullEvent::LayerStarted {
                        digest,
                        size: total,
                        resumed_from: 0,
                    })
                } else {
                    Some(PullEvent::LayerProgress {
                        digest,
                        done,
                        total,
                    })
                }
            }
            _ => None,
        }
    }

    /// Reports the image resolved, from the manifest containerd stored.
    async fn resolve(
        &mut self,
        containerd: &Containerd,
        manifest: &Digest,
        sink: &dyn ProgressSink,
    ) {
        let Ok(Some(bytes)) = containerd.read_small(manifest).await else {
            return;
        };
        let Ok(crate::registry::manifest::Manifest::Image(m)) =
            crate::registry::manifest::parse(&bytes, None, &self.reference.to_string())
        else {
            return;
        };
        self.resolved = true;
        sink.event(PullEvent::Resolved {
            reference: self.reference.to_string(),
            digest: manifest.clone(),
            platform: self.platform.to_string(),
            layers: m.layers.len(),
            bytes: m.layers.iter().map(|l| l.size).sum(),
        });
    }

    /// Fills in what the progress stream did not say (an image containerd
    /// had whole sends no layer events), then reports the pull done.
    async fn finish(
        mut self,
        containerd: &Containerd,
        sink: &dyn ProgressSink,
    ) -> Result<(), ContainerdError> {
        let Some((digest, manifest)) = containerd
            .recorded_manifest(&self.reference, &self.platform)
            .await?
        else {
            return Ok(());
        };
        if !self.resolved {
            self.resolve(containerd, &digest, sink).await;
        }
        for layer in &manifest.layers {
            if !self.done_layers.contains(&layer.digest.to_string()) {
                sink.event(PullEvent::LayerDone {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    cached: !self.started_layers.contains(&layer.digest.to_string()),
                });
            }
        }
        sink.event(PullEvent::Done {
            reference: self.reference.to_string(),
            digest,
            elapsed_ms: self
                .started
                .elapsed()
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        });
        Ok(())
    }
}

/// The pull as the transfer service takes it: from the registry (with
/// cvmd's auth stream, the node's hosts dir, plain HTTP for an insecure
/// registry) into containerd's image store, unpacked to overlayfs for
/// cvmd's platform, reporting on the progress stream.
fn transfer_request(
    reference: &Reference,
    req: &PullRequest<'_>,
    auth_stream: &str,
    progress_stream: &str,
) -> TransferRequest {
    let insecure = req
        .image
        .registry
        .insecure_registries
        .contains(&reference.registry);
    let source = OciRegistry {
        reference: reference.to_string(),
        resolver: Some(RegistryResolver {
            auth_stream: auth_stream.to_string(),
            host_dir: req
                .route
                .hosts_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            default_scheme: if insecure {
                "http".into()
            } else {
                String::new()
            },
            ..Default::default()
        }),
    };
    let platform = api_platform(&req.image.platform);
    let destination = ImageStore {
        name: reference.to_string(),
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration {
            platform: Some(platform),
            snapshotter: SNAPSHOTTER.into(),
        }],
        ..Default::default()
    };
    TransferRequest {
        source: Some(to_any(&source)),
        destination: Some(to_any(&destination)),
        options: Some(TransferOptions {
            progress_stream: progress_stream.to_string(),
        }),
    }
}

/// cvmd's answer to one credential request: the image's registry gets
/// `credential` (looked up once, before the pull); any other host, or a
/// request cvmd cannot read, gets none (containerd then goes on
/// anonymously).
fn answer_auth(any: &Any, reference: &Reference, credential: Option<&Credential>) -> AuthResponse {
    let Some(request) = decode::<AuthRequest>(any) else {
        tracing::warn!(type_url = %any.type_url, "containerd sent a credential request cvmd cannot read; answering with none");
        return AuthResponse::default();
    };
    if request.host != reference.registry && request.host != reference.api_host() {
        tracing::warn!(host = %request.host, image = %reference, "containerd asked for credentials of another registry than the image's; answering with none");
        return AuthResponse::default();
    }
    match credential {
        Some(c) => {
            tracing::debug!(host = %request.host, kind = c.kind(), "answering containerd's credential request");
            auth_response(c.clone())
        }
        None => {
            tracing::debug!(host = %request.host, "no credentials for this registry; containerd pulls anonymously");
            AuthResponse::default()
        }
    }
}

fn auth_response(credential: Credential) -> AuthResponse {
    match credential {
        Credential::Basic { username, password } => AuthResponse {
            auth_type: AuthType::Credentials as i32,
            username,
            secret: password.expose().to_string(),
            ..Default::default()
        },
        // containerd exchanges a secret without a username as a refresh
        // token, which is what docker's identitytoken is.
        Credential::IdentityToken { token, .. } => AuthResponse {
            auth_type: AuthType::Refresh as i32,
            secret: token.expose().to_string(),
            ..Default::default()
        },
        Credential::RegistryToken(token) => AuthResponse {
            auth_type: AuthType::Header as i32,
            secret: format!("Bearer {}", token.expose()),
            ..Default::default()
        },
    }
}

fn decode<T: Message + Name + Default>(any: &Any) -> Option<T> {
    let name = T::full_name();
    let matches = any.type_url == name || any.type_url.ends_with(&format!("/{name}"));
    if !matches {
        return None;
    }
    T::decode(any.value.as_slice()).ok()
}

fn api_platform(p: &Platform) -> ApiPlatform {
    ApiPlatform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone().unwrap_or_default(),
        os_version: String::new(),
    }
}

fn is_layer(media_type: &str) -> bool {
    media_type.contains(".layer.") || media_type.contains("rootfs.diff")
}

/// The digest in one of containerd's ref keys (`manifest-sha256:…`).
fn ref_key_digest(name: &str, kind: &str) -> Option<Digest> {
    name.strip_prefix(kind)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::Secret;
    use containerd_client::types::Descriptor;

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn report(event: &str, media_type: &str, d: &str, progress: i64, total: i64) -> Progress {
        Progress {
            event: event.into(),
            name: format!("layer-{d}"),
            parents: vec![format!("manifest-{}", digest('f'))],
            progress,
            total,
            desc: Some(Descriptor {
                media_type: media_type.into(),
                digest: d.into(),
                size: total,
                annotations: Default::default(),
            }),
        }
    }

    #[test]
    fn layer_reports_become_started_progress_done() {
        let mut t = Tracker::new("r/x:1".parse().unwrap(), "linux/amd64".parse().unwrap());
        let d = digest('a');
        let events: Vec<_> = [
            report("waiting", LAYER, &d, 0, 100),
            report("downloading", LAYER, &d, 10, 100),
            report("downloading", LAYER, &d, 60, 100),
            report("complete", LAYER, &d, 100, 100),
            // Late duplicates after done say nothing new.
            report("complete", LAYER, &d, 100, 100),
            report("downloading", LAYER, &d, 100, 100),
        ]
        .iter()
        .filter_map(|p| t.layer_event(p))
        .map(|e| {
            format!("{e:?}")
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
        assert_eq!(events, ["LayerStarted", "LayerProgress", "LayerDone"]);
    }

    #[test]
    fn manifests_configs_and_free_text_events_are_not_layer_events() {
        let mut t = Tracker::new("r/x:1".parse().unwrap(), "linux/amd64".parse().unwrap());
        let manifest = report(
            "downloading",
            "application/vnd.oci.image.manifest.v1+json",
            &digest('b'),
            1,
            2,
        );
        assert!(t.layer_event(&manifest).is_none());
        let config = report(
            "complete",
            "application/vnd.oci.image.config.v1+json",
            &digest('c'),
            2,
            2,
        );
        assert!(t.layer_event(&config).is_none());
        let text = Progress {
            event: "Resolving from OCI Registry (r/x:1)".into(),
            ..Default::default()
        };
        assert!(t.layer_event(&text).is_none());
        let docker = report(
            "already exists",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            &digest('d'),
            5,
            5,
        );
        assert!(matches!(
            t.layer_event(&docker),
            Some(PullEvent::LayerDone { cached: true, .. })
        ));
    }

    /// Pull options with only what the transfer request reads set.
    fn options(insecure: &[&str], platform: &str) -> crate::image::PullOptions {
        crate::image::PullOptions {
            cache_dir: "/nonexistent".into(),
            registry: crate::image::RegistryAccess {
                pull_secret: None,
                docker_config: "/nonexistent/config.json".into(),
                extra_certs: Vec::new(),
                insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
                mirrors: Default::default(),
                retries: 1,
            },
            platform: platform.parse().unwrap(),
            policy: crate::image::PullPolicy::IfNotPresent,
            concurrency: 1,
            bandwidth: 0,
            max_layer_size: 0,
            max_image_size: 0,
            cache_reserve: crate::unpack::Reserve::Percent(0),
            cache_budget: None,
        }
    }

    #[test]
    fn the_request_carries_scheme_hosts_dir_platform_and_streams() {
        let reference: Reference = "reg.example:5000/team/ws:1".parse().unwrap();
        let image = options(&["reg.example:5000"], "linux/arm64/v8");
        let route = super::super::PullRoute {
            path: super::super::PullPath::Auto,
            hosts_dir: Some("/etc/containerd/certs.d".into()),
        };
        let s = PullRequest {
            image: &image,
            route: &route,
            policy: crate::image::PullPolicy::IfNotPresent,
        };
        let r = transfer_request(&reference, &s, "creds-1", "progress-1");
        let source: OciRegistry = decode(r.source.as_ref().unwrap()).unwrap();
        assert_eq!(source.reference, "reg.example:5000/team/ws:1");
        let resolver = source.resolver.unwrap();
        assert_eq!(resolver.auth_stream, "creds-1");
        assert_eq!(resolver.default_scheme, "http");
        assert_eq!(resolver.host_dir, "/etc/containerd/certs.d");
        let dest: ImageStore = decode(r.destination.as_ref().unwrap()).unwrap();
        assert_eq!(dest.name, "reg.example:5000/team/ws:1");
        let unpack = &dest.unpacks[0];
        assert_eq!(unpack.snapshotter, "overlayfs");
        let p = unpack.platform.as_ref().unwrap();
        assert_eq!(
            (p.architecture.as_str(), p.variant.as_str()),
            ("arm64", "v8")
        );
        assert_eq!(r.options.unwrap().progress_stream, "progress-1");

        // HTTPS by default, and no hosts dir unless one is set.
        let image = options(&[], "linux/amd64");
        let route = super::super::PullRoute {
            path: super::super::PullPath::Auto,
            hosts_dir: None,
        };
        let plain = PullRequest {
            image: &image,
            route: &route,
            policy: crate::image::PullPolicy::IfNotPresent,
        };
        let r = transfer_request(&reference, &plain, "c", "p");
        let resolver = decode::<OciRegistry>(r.source.as_ref().unwrap())
            .unwrap()
            .resolver
            .unwrap();
        assert_eq!(
            (resolver.default_scheme.as_str(), resolver.host_dir.as_str()),
            ("", "")
        );
    }

    #[test]
    fn ref_keys_give_their_digest() {
        let d = digest('e');
        assert_eq!(
            ref_key_digest(&format!("manifest-{d}"), "manifest").map(|x| x.to_string()),
            Some(d.clone())
        );
        assert!(ref_key_digest(&format!("index-{d}"), "manifest").is_none());
        assert!(ref_key_digest("manifest-nonsense", "manifest").is_none());
    }

    #[test]
    fn credentials_map_to_containerds_auth_types() {
        let basic = auth_response(Credential::Basic {
            username: "bob".into(),
            password: Secret::new("pw"),
        });
        assert_eq!(basic.auth_type, AuthType::Credentials as i32);
        assert_eq!(
            (basic.username.as_str(), basic.secret.as_str()),
            ("bob", "pw")
        );
        let refresh = auth_response(Credential::IdentityToken {
            username: "<token>".into(),
            token: Secret::new("rt"),
        });
        assert_eq!(refresh.auth_type, AuthType::Refresh as i32);
        assert_eq!(
            (refresh.username.as_str(), refresh.secret.as_str()),
            ("", "rt")
        );
    }

    #[test]
    fn only_the_images_registry_gets_a_credential() {
        let credential = Credential::Basic {
            username: "bob".into(),
            password: Secret::new("pw"),
        };
        let credential = Some(&credential);
        let reference: Reference = "reg.example:5000/team/ws:1".parse().unwrap();
        let ask = |host: &str| {
            to_any(&AuthRequest {
                host: host.into(),
                reference: reference.to_string(),
                wwwauthenticate: vec![],
            })
        };
        let ours = answer_auth(&ask("reg.example:5000"), &reference, credential);
        assert_eq!(ours.auth_type, AuthType::Credentials as i32);
        assert_eq!(ours.secret, "pw");
        // Docker Hub: containerd asks for the API host.
        let hub: Reference = "ubuntu:22.04".parse().unwrap();
        let hub_ask = to_any(&AuthRequest {
            host: "registry-1.docker.io".into(),
            reference: hub.to_string(),
            wwwauthenticate: vec![],
        });
        assert_eq!(
            answer_auth(&hub_ask, &hub, credential).auth_type,
            AuthType::Credentials as i32
        );
        let theirs = answer_auth(&ask("evil.example"), &reference, credential);
        assert_eq!(theirs.auth_type, AuthType::None as i32);
        assert!(theirs.secret.is_empty());
        let garbage = Any {
            type_url: "something.Else".into(),
            value: vec![1, 2, 3],
        };
        assert_eq!(
            answer_auth(&garbage, &reference, credential).auth_type,
            AuthType::None as i32
        );
    }
}
