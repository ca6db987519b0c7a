//! `grpc.health.v1` and reflection on the control socket, talked to with
//! generic clients (tonic-health's and tonic-reflection's), as
//! grpc_health_probe and grpcurl would: NOT_SERVING while the image is
//! pulled, SERVING once the workspace runs, NOT_SERVING while it stops;
//! reflection lists the services and describes cvmd.v1.Control. The
//! workspace is a real `cvmd run` of busybox under runc.
//!
//! Needs root, runc and docker-registry; skips with a reason otherwise.

#[allow(dead_code)] // the exec and permission helpers are control_api.rs's
use crate::common::prereq;
use std::time::Duration;

use crate::common::api::*;
use crate::common::layers::*;
use crate::common::Registry;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn check(socket: &std::path::Path, service: &str) -> ServingStatus {
    let channel = cvmd::api::client::channel(socket).await.unwrap();
    let res = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(res.status).unwrap()
}

async fn reflect(socket: &std::path::Path, req: MessageRequest) -> MessageResponse {
    let channel = cvmd::api::client::channel(socket).await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(req),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[test]
fn health_follows_the_phase_and_reflection_describes_the_api() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    push(&reg, "health/ws", "v1", &chatty_image());
    // Slow enough that the pull phase can be asked about.
    proxy.throttle_blobs(256 << 10);
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &proxy.host());
    let reference = format!("{}/health/ws:v1", proxy.host());
    let ws = start_cvmd(&cvmd, &reference, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socket = ws.socket.clone();

    let early = ws.status();
    assert_ne!(
        early["phase"], "running",
        "the throttled pull is still on: {early}"
    );
    assert_eq!(rt.block_on(check(&socket, "")), ServingStatus::NotServing);
    assert_eq!(
        rt.block_on(check(&socket, "cvmd.v1.Control")),
        ServingStatus::NotServing
    );

    ws.wait_for("running", |s| s["phase"] == "running");
    // The status follows the phase event; give the follower a moment.
    assert!(
        crate::common::wait_until(Duration::from_secs(5), || {
            rt.block_on(check(&socket, "")) == ServingStatus::Serving
        }),
        "SERVING once running"
    );
    assert_eq!(
        rt.block_on(check(&socket, "cvmd.v1.Control")),
        ServingStatus::Serving
    );
    let unknown = rt.block_on(async {
        let channel = cvmd::api::client::channel(&socket).await.unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
    });
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    // Reflection: the services, and Control's descriptor.
    let MessageResponse::ListServicesResponse(list) = rt.block_on(reflect(
        &socket,
        MessageRequest::ListServices(String::new()),
    )) else {
        panic!("not a service list")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "cvmd.v1.Control",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let MessageResponse::FileDescriptorResponse(fds) = rt.block_on(reflect(
        &socket,
        MessageRequest::FileContainingSymbol("cvmd.v1.Control".into()),
    )) else {
        panic!("no descriptor for cvmd.v1.Control")
    };
    let raw = fds.file_descriptor_proto.concat();
    assert!(
        String::from_utf8_lossy(&raw).contains("cvmd/v1/control.proto"),
        "the descriptor names the proto file"
    );

    // Stopping: no longer serving while the workspace winds down, then cvmd
    // exits and the socket goes (a second SIGTERM from `finish` would
    // escalate, so it waits for that).
    let stop = ws.run(&["stop"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    let mut after_stop = Vec::new();
    let gone = crate::common::wait_until(Duration::from_secs(20), || {
        let answer = rt.block_on(async {
            let channel = cvmd::api::client::channel(&socket).await.ok()?;
            let res = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()?;
            ServingStatus::try_from(res.into_inner().status).ok()
        });
        match answer {
            Some(s) => {
                after_stop.push(s);
                false
            }
            None => true,
        }
    });
    assert!(gone, "cvmd ends after Stop");
    assert!(
        !after_stop.contains(&ServingStatus::Serving),
        "never SERVING after Stop: {after_stop:?}"
    );
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(3), "{stderr}");
}
