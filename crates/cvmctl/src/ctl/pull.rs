//! `cvmctl pull`: the image pull's progress, drawn with the same sinks as
//! `cvmd pull` (per-layer bars on a terminal, plain lines otherwise).

use std::io::IsTerminal;
use std::path::Path;

use super::{connect, Exit, Failure};
use cvmd_api::pb;
use cvmd_digest::Digest;
use cvmd_progress::{PlainLines, TerminalBars};
use cvmd_progress::{ProgressSink, PullEvent};

/// The pull events a layer's report stands for; a digest cvmd should
/// never send malformed is skipped.
pub fn events_of(l: &pb::LayerProgress) -> Vec<PullEvent> {
    let Ok(digest) = l.digest.parse::<Digest>() else {
        return Vec::new();
    };
    match l.state.as_str() {
        "waiting" => vec![PullEvent::LayerWaiting { digest }],
        "done" | "cached" => vec![PullEvent::LayerDone {
            digest,
            size: l.total,
            cached: l.state == "cached",
        }],
        _ => vec![PullEvent::LayerProgress {
            digest,
            done: l.done,
            total: l.total,
        }],
    }
}

pub async fn pull(socket: &Path) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    let mut stream = client
        .pull_progress(pb::PullProgressRequest {})
        .await?
        .into_inner();
    let sink: Box<dyn ProgressSink> = if std::io::stderr().is_terminal() {
        Box::new(TerminalBars::default())
    } else {
        Box::new(PlainLines)
    };
    let mut started = std::collections::HashSet::new();
    while let Some(l) = stream.message().await? {
        // A plain log wants one line when a layer starts, not every byte.
        if l.state == "downloading" && started.insert(l.digest.clone()) {
            if let Ok(digest) = l.digest.parse::<Digest>() {
                sink.event(PullEvent::LayerStarted {
                    digest,
                    size: l.total,
                    resumed_from: 0,
                });
            }
        }
        for e in events_of(&l) {
            sink.event(e);
        }
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_reports_become_pull_events() {
        let d = Digest::of(b"x").to_string();
        let l = |state: &str| pb::LayerProgress {
            digest: d.clone(),
            done: 5,
            total: 9,
            state: state.into(),
        };
        assert!(matches!(
            events_of(&l("cached"))[..],
            [PullEvent::LayerDone {
                cached: true,
                size: 9,
                ..
            }]
        ));
        assert!(matches!(
            events_of(&l("downloading"))[..],
            [PullEvent::LayerProgress { done: 5, .. }]
        ));
        let mut bad = l("done");
        bad.digest = "../../etc".into();
        assert!(events_of(&bad).is_empty());
    }
}
