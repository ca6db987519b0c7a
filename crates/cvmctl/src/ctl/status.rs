//! `cvmctl status`, `events`, `stop` and `restart`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::{connect, wants_json, Exit, Failure};
use cvmd_api::pb;

pub fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    json!({
        "workspace": s.workspace,
        "phase": s.phase,
        "timeline": s.timeline.iter().map(|t| json!({
            "name": t.name, "start_offset_ms": t.start_offset_ms, "duration_ms": t.duration_ms,
        })).collect::<Vec<_>>(),
        "image": {
            "reference": s.image_reference,
            "digest": s.image_digest,
            "source": (!s.image_source.is_empty()).then_some(&s.image_source),
        },
        "rootfs_mode": s.rootfs_mode,
        "idmap_mode": s.idmap_mode,
        "runtime": s.runtime,
        "init_pid": (s.init_pid != 0).then_some(s.init_pid),
        "uptime_ms": s.uptime_ms,
        "exit_status": s.has_exit_status.then_some(s.exit_status),
        "last_error": (!s.last_error.is_empty()).then_some(&s.last_error),
        "boots": s.boots,
        "reboots": s.reboots,
        "oom_kills": s.oom_kills,
        "disk": (!s.disk.is_empty()).then_some(&s.disk),
        "preflight": s.preflight.iter().map(|c| json!({
            "name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix,
        })).collect::<Vec<_>>(),
    })
}

/// What a person reads.
pub fn status_text(s: &pb::StatusResponse) -> String {
    let mut out = format!("workspace  {}\nphase      {}\n", s.workspace, s.phase);
    let dash = |v: &str| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    out.push_str(&format!("image      {}\n", dash(&s.image_reference)));
    out.push_str(&format!("digest     {}\n", dash(&s.image_digest)));
    if !s.image_source.is_empty() {
        out.push_str(&format!("source     {}\n", s.image_source));
    }
    out.push_str(&format!(
        "rootfs     {} (id mapping: {})\nruntime    {}\n",
        dash(&s.rootfs_mode),
        dash(&s.idmap_mode),
        s.runtime
    ));
    if s.init_pid != 0 {
        out.push_str(&format!(
            "init pid   {}\nuptime     {}\n",
            s.init_pid,
            human_duration(Duration::from_millis(s.uptime_ms))
        ));
    }
    if s.boots > 1 {
        out.push_str(&format!("boots      {}\n", s.boots));
    }
    if !s.disk.is_empty() {
        out.push_str(&format!("disk       {}\n", s.disk));
    }
    if s.reboots > 0 {
        out.push_str(&format!("reboots    {}\n", s.reboots));
    }
    if s.oom_kills > 0 {
        out.push_str(&format!("oom kills  {}\n", s.oom_kills));
    }
    if s.has_exit_status {
        out.push_str(&format!("exit       {}\n", s.exit_status));
    }
    if !s.last_error.is_empty() {
        out.push_str(&format!("error      {}\n", s.last_error));
    }
    out.push_str("timeline\n");
    for t in &s.timeline {
        let took = if t.duration_ms == 0 && t.name == s.phase {
            "running".to_string()
        } else {
            format!("{} ms", t.duration_ms)
        };
        out.push_str(&format!(
            "  {:<10} +{:>7} ms  {took}\n",
            t.name, t.start_offset_ms
        ));
    }
    if !s.preflight.is_empty() {
        out.push_str("preflight\n");
    }
    for c in &s.preflight {
        out.push_str(&format!("  {:<5} {:<17} {}\n", c.status, c.name, c.detail));
        if !c.fix.is_empty() && (c.status == "warn" || c.status == "fail") {
            out.push_str(&format!("  {:<5} {:<17} fix: {}\n", "", "", c.fix));
        }
    }
    out
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{}.{:01}s", s, d.subsec_millis() / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub async fn status(socket: &Path, json: bool, ready: bool) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    let s = client.status(pb::StatusRequest {}).await?.into_inner();
    if ready {
        // A readiness probe: the answer is the exit code; one line for a person.
        println!("{}", s.phase);
        return Ok(if s.phase == "running" {
            Exit::Ok
        } else {
            Exit::NotReady
        });
    }
    if wants_json(json) {
        println!("{}", status_json(&s));
    } else {
        print!("{}", status_text(&s));
    }
    Ok(Exit::Ok)
}

pub async fn events(socket: &Path, follow: bool, json: bool) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    let mut stream = client.events(pb::EventsRequest {}).await?.into_inner();
    let json = wants_json(json);
    while let Some(e) = stream.message().await? {
        let mut out = std::io::stdout().lock();
        let line = if json {
            json!({"time_ms": e.time_ms, "kind": e.kind, "phase": e.phase, "message": e.message})
                .to_string()
        } else if e.kind == "phase" {
            format!("phase {}", e.phase)
        } else {
            format!("{} ({}): {}", e.kind, e.phase, e.message)
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        // Without -f: the current phase, and that is all.
        if !follow {
            break;
        }
    }
    Ok(Exit::Ok)
}

pub async fn stop(socket: &Path) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    client.stop(pb::StopRequest {}).await?;
    eprintln!("stopping the workspace; cvmd exits when it has");
    Ok(Exit::Ok)
}

pub async fn restart(socket: &Path) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    client.restart(pb::RestartRequest {}).await?;
    eprintln!("restarting the workspace");
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::StatusResponse {
        pb::StatusResponse {
            workspace: "ws".into(),
            phase: "running".into(),
            runtime: "runc".into(),
            init_pid: 42,
            uptime_ms: 61_000,
            timeline: vec![pb::PhaseTiming {
                name: "pull".into(),
                start_offset_ms: 1,
                duration_ms: 20,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn json_has_nulls_for_what_is_not_there() {
        let v = status_json(&sample());
        assert_eq!(v["phase"], "running");
        assert_eq!(v["init_pid"], 42);
        assert!(v["exit_status"].is_null());
        assert_eq!(v["timeline"][0]["duration_ms"], 20);
    }

    #[test]
    fn text_reads_well() {
        let t = status_text(&sample());
        assert!(t.contains("phase      running"), "{t}");
        assert!(t.contains("uptime     1m01s"), "{t}");
        assert!(t.contains("pull"), "{t}");
        assert!(!t.contains("exit"), "{t}");
        assert!(!t.contains("source"), "no source before the pull: {t}");
    }

    #[test]
    fn the_image_source_shows_once_known() {
        let s = pb::StatusResponse {
            image_source: "containerd 2.1.9 (namespace k8s.io), already there".into(),
            ..sample()
        };
        assert!(status_text(&s)
            .contains("source     containerd 2.1.9 (namespace k8s.io), already there"));
        assert_eq!(
            status_json(&s)["image"]["source"],
            "containerd 2.1.9 (namespace k8s.io), already there"
        );
        assert!(status_json(&sample())["image"]["source"].is_null());
    }
}
