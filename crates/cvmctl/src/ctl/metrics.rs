//! `cvmctl metrics`: the OpenMetrics text cvmd renders, as Prometheus
//! would scrape it from CVMD_METRICS_ADDR.

use std::io::Write;
use std::path::Path;

use super::{connect, Exit, Failure};
use cvmd_api::pb;

pub async fn metrics(socket: &Path) -> Result<Exit, Failure> {
    let mut client = connect(socket).await?;
    let text = client
        .metrics(pb::MetricsRequest {})
        .await?
        .into_inner()
        .text;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::new(Exit::Error, format!("writing to stdout: {e}")))?;
    Ok(Exit::Ok)
}
