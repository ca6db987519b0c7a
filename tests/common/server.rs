//! A tiny hyper HTTP/1.1 server on its own thread and runtime, shared by the
//! token server and the fault proxy.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(full(body))
        .expect("response")
}

/// Stops the server (and aborts in-flight connections) on drop.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds 127.0.0.1:0 and serves `handler` until the handle is dropped.
pub fn spawn<H, F>(name: &str, handler: H) -> ServerHandle
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    spawn_on(name, "127.0.0.1:0".parse().unwrap(), handler)
}

/// Binds `listen` and serves `handler` until the handle is dropped. The
/// socket and the serving threads are in the caller's network namespace
/// (a thread inherits its creator's), so a caller inside
/// `registry::in_netns` serves in that namespace.
pub fn spawn_on<H, F>(name: &str, listen: SocketAddr, handler: H) -> ServerHandle
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind(listen).expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("local_addr");
    let (tx, mut rx) = oneshot::channel::<()>();
    let handler = Arc::new(handler);
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Two workers so a throttled blob stream cannot starve other
            // requests being served at the same time.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut rx => break,
                        acc = listener.accept() => match acc {
                            Ok(s) => s,
                            Err(_) => continue,
                        },
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let fut = handler(req);
                            async move { Ok::<_, std::convert::Infallible>(fut.await) }
                        });
                        // Errors here are clients hanging up or deliberate
                        // body aborts by the fault proxy.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            // Dropping the runtime cancels every connection task.
            rt.shutdown_background();
        })
        .expect("spawn server thread");
    ServerHandle {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
