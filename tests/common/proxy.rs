//! `FaultProxy`: a streaming HTTP/1.1 reverse proxy in front of a plain-HTTP
//! registry that records requests and injects faults into blob GETs.

use super::server::{self, full, Body, ServerHandle};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// Status sent to the client (0 if upstream was unreachable).
    pub status: u16,
    /// Which fault, if any, was applied.
    pub fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    Cut(u64),
    Corrupt,
}

#[derive(Default)]
struct Knobs {
    fail: (u16, usize),
    cut: (u64, usize),
    corrupt: usize,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    log: Mutex<Vec<RecordedRequest>>,
    knobs: Mutex<Knobs>,
    throttle: AtomicU64,
    /// The rate of whole-blob GETs (no Range, or an open one) when not 0.
    throttle_whole: AtomicU64,
}

pub struct FaultProxy {
    shared: Arc<Shared>,
    handle: ServerHandle,
}

/// `/v2/<name>/blobs/<digest>` (not uploads) → digest.
pub fn blob_digest_of(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or(path);
    let (_, d) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
    (!d.starts_with("uploads")).then_some(d)
}

impl FaultProxy {
    /// Proxies to `upstream` (e.g. `registry.url()`, plain HTTP only).
    pub fn start(upstream: &str) -> FaultProxy {
        FaultProxy::start_on(upstream, "127.0.0.1:0".parse().unwrap())
    }

    /// As [`start`](Self::start), listening on `listen` (port 0: any) in
    /// the caller's network namespace.
    pub fn start_on(upstream: &str, listen: std::net::SocketAddr) -> FaultProxy {
        assert!(
            upstream.starts_with("http://"),
            "FaultProxy forwards to plain HTTP only"
        );
        cvmd_image::registry::client::tls_crypto();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            log: Mutex::new(Vec::new()),
            knobs: Mutex::new(Knobs::default()),
            throttle: AtomicU64::new(0),
            throttle_whole: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let handle = server::spawn_on("fault-proxy", listen, move |req| {
            let sh = sh.clone();
            async move { proxy(sh, req).await }
        });
        FaultProxy { shared, handle }
    }

    /// `ADDR:PORT` (`127.0.0.1:PORT` unless started on another address)
    pub fn host(&self) -> String {
        self.handle.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// GETs of `/v2/*/blobs/<digest>` seen so far (faulted ones included).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && blob_digest_of(&r.path) == Some(digest))
            .count()
    }

    /// Whether any request carried a `Range` header.
    pub fn saw_range(&self) -> bool {
        self.requests().iter().any(|r| r.range.is_some())
    }

    /// The next `n` blob GETs answer `status` without reaching upstream.
    pub fn fail_blob_gets_with(&self, status: u16, n: usize) {
        self.shared.knobs.lock().unwrap().fail = (status, n);
    }

    /// The next `n` blob GETs send headers (full Content-Length) and the first
    /// `bytes` of the body, then drop the connection.
    pub fn cut_blob_after(&self, bytes: u64, n: usize) {
        self.shared.knobs.lock().unwrap().cut = (bytes, n);
    }

    /// The next `n` blob GETs have one body byte flipped (same length).
    pub fn corrupt_blob_bytes(&self, n: usize) {
        self.shared.knobs.lock().unwrap().corrupt = n;
    }

    /// Limits blob bodies to `bytes_per_sec` (0 = unlimited); applies to
    /// streams in flight too.
    pub fn throttle_blobs(&self, bytes_per_sec: u64) {
        self.shared.throttle.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Limits the bodies of whole-blob GETs (no Range, or an open one: a
    /// pull's download and its resumes) to `bytes_per_sec`, whatever
    /// [`throttle_blobs`](Self::throttle_blobs) says; 0 puts them back
    /// under it. Spans (closed ranges, a lazy start's reads) are not
    /// affected: a test holds a background pull while reads go on.
    pub fn throttle_whole_blobs(&self, bytes_per_sec: u64) {
        self.shared
            .throttle_whole
            .store(bytes_per_sec, Ordering::SeqCst);
    }
}

/// Whether a GET with this Range header asks for the whole blob or its
/// rest (none, or `bytes=A-`), rather than a span (`bytes=A-B`).
fn rec_is_whole(range: &Option<String>) -> bool {
    range.as_deref().is_none_or(|r| r.ends_with('-'))
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn proxy(sh: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let is_blob_get = method == hyper::Method::GET && blob_digest_of(&path).is_some();
    let mut rec = RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        range: header(&req, "range"),
        authorization: header(&req, "authorization"),
        status: 0,
        fault: None,
    };
    let whole = rec_is_whole(&rec.range);

    let (mut fail, mut cut, mut corrupt) = (None, None, false);
    if is_blob_get {
        let mut k = sh.knobs.lock().unwrap();
        if k.fail.1 > 0 {
            k.fail.1 -= 1;
            fail = Some(k.fail.0);
        } else {
            if k.cut.1 > 0 {
                k.cut.1 -= 1;
                cut = Some(k.cut.0);
            }
            if k.corrupt > 0 {
                k.corrupt -= 1;
                corrupt = true;
            }
        }
    }
    if let Some(status) = fail {
        rec.status = status;
        rec.fault = Some(Fault::Status(status));
        sh.log.lock().unwrap().push(rec);
        return server::response(
            status,
            "application/json",
            r#"{"errors":[{"code":"UNKNOWN","message":"injected by FaultProxy"}]}"#,
        );
    }

    let mut up = sh
        .client
        .request(method.clone(), format!("{}{path}", sh.upstream));
    for (k, v) in req.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            // Host passes through so the registry builds upload Locations
            // that point back at the proxy.
            up = up.header(k, v);
        }
    }
    let body_stream = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    up = up.body(reqwest::Body::wrap_stream(body_stream));

    let resp = match up.send().await {
        Ok(r) => r,
        Err(e) => {
            rec.status = 502;
            sh.log.lock().unwrap().push(rec);
            return server::response(502, "text/plain", format!("upstream: {e}"));
        }
    };
    let status = resp.status().as_u16();
    let mut builder = Response::builder().status(status);
    for (k, v) in resp.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            builder = builder.header(k, v);
        }
    }
    rec.status = status;
    let success = (200..300).contains(&status);
    if is_blob_get && success {
        rec.fault = match (cut, corrupt) {
            (Some(c), _) => Some(Fault::Cut(c)),
            (None, true) => Some(Fault::Corrupt),
            _ => None,
        };
    }
    sh.log.lock().unwrap().push(rec);

    if method == hyper::Method::HEAD {
        return builder.body(full(Bytes::new())).expect("response");
    }
    let apply = is_blob_get && success;
    let (cut, corrupt) = if apply { (cut, corrupt) } else { (None, false) };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let sh2 = sh.clone();
    tokio::spawn(async move {
        let mut upstream = resp.bytes_stream();
        let mut sent: u64 = 0;
        let mut corrupt = corrupt;
        while let Some(chunk) = upstream.next().await {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            if corrupt && !chunk.is_empty() {
                let mut m = BytesMut::from(&chunk[..]);
                m[0] ^= 0xff;
                chunk = m.freeze();
                corrupt = false;
            }
            if let Some(limit) = cut {
                if sent + chunk.len() as u64 > limit {
                    let keep = usize::try_from(limit - sent).unwrap();
                    if keep > 0 && tx.send(Ok(Frame::data(chunk.slice(..keep)))).await.is_err() {
                        return;
                    }
                    // Let hyper flush the partial body before the error
                    // makes it abort the connection.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx.send(Err(std::io::Error::other("FaultProxy cut"))).await;
                    return;
                }
            }
            sent += chunk.len() as u64;
            if apply {
                // Paced in small slices so a slow rate takes effect quickly
                // and a killed client is noticed promptly.
                let mut rest = chunk;
                while !rest.is_empty() {
                    let held = if whole {
                        sh2.throttle_whole.load(Ordering::SeqCst)
                    } else {
                        0
                    };
                    let rate = if held > 0 {
                        held
                    } else {
                        sh2.throttle.load(Ordering::SeqCst)
                    };
                    let n = if rate == 0 {
                        rest.len()
                    } else {
                        rest.len().min((rate / 20).max(1) as usize)
                    };
                    let part = rest.split_to(n);
                    if rate > 0 {
                        tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                    }
                    if tx.send(Ok(Frame::data(part))).await.is_err() {
                        return;
                    }
                }
            } else if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    builder
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}
