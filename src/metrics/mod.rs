//! What a Prometheus scrape or a dashboard reads about one workspace:
//! OpenMetrics text from `prometheus-client`, served by the control API's
//! Metrics call (`cvmctl metrics`) and, with CVMD_METRICS_ADDR, on HTTP
//! (`http`). The names are listed in docs/operations.md, "Metrics".

pub mod http;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::pull::PullEvent;
use crate::supervisor::lifecycle::Phase;

/// The content type of [`Metrics::render`]'s text, for HTTP scrapers.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabel {
    /// image: the whole image was ready in the cache (no registry call);
    /// layer: one layer of a pull was already unpacked.
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of one cvmd; cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    phase: Family<PhaseLabel, Gauge>,
    phase_start: Family<PhaseLabel, FloatGauge>,
    phase_duration: Family<PhaseLabel, FloatGauge>,
    pull_bytes: Counter,
    pull_duration: Histogram,
    cache_hits: Family<LevelLabel, Counter>,
    cache_misses: Family<LevelLabel, Counter>,
    cache_size: Gauge,
    cache_budget: Gauge,
    restarts: Counter,
    oom_kills: Counter,
    exec_sessions: Counter,
    exec_active: Gauge,
    prefetch_runs: Family<OutcomeLabel, Counter>,
    prefetch_failed_images: Gauge,
    prefetch_last_success: Gauge,
    /// The cache whose size a scrape reads, when cvmd's own cache is used.
    cache_dir: OnceLock<PathBuf>,
    /// Serializes rendering: the cache size is read and encoded together.
    render: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cvmd");
        let phase = Family::<PhaseLabel, Gauge>::default();
        let phase_start = Family::<PhaseLabel, FloatGauge>::default();
        let phase_duration = Family::<PhaseLabel, FloatGauge>::default();
        let pull_bytes = Counter::default();
        // 0.5 s to ~17 min: a warm small image to a cold 20 GiB one.
        let pull_duration = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        let cache_hits = Family::<LevelLabel, Counter>::default();
        let cache_misses = Family::<LevelLabel, Counter>::default();
        let cache_size = Gauge::default();
        let cache_budget = Gauge::default();
        let restarts = Counter::default();
        // Registered so dashboards and alerts can be written now; nothing
        // watches the workspace's cgroup for OOM events yet.
        let oom_kills = Counter::<u64>::default();
        let exec_sessions = Counter::default();
        let exec_active = Gauge::default();
        let prefetch_runs = Family::<OutcomeLabel, Counter>::default();
        let prefetch_failed_images = Gauge::default();
        let prefetch_last_success = Gauge::default();
        registry.register(
            "workspace_phase",
            "1 for the phase the workspace is in, 0 for the others",
            phase.clone(),
        );
        registry.register_with_unit(
            "phase_start",
            "When the phase last began, since cvmd started",
            Unit::Seconds,
            phase_start.clone(),
        );
        registry.register_with_unit(
            "phase_duration",
            "How long the phase last took (absent while it runs for the first time)",
            Unit::Seconds,
            phase_duration.clone(),
        );
        registry.register_with_unit(
            "pull",
            "Layer bytes downloaded from the registry (a layer already unpacked in the cache counts nothing)",
            Unit::Bytes,
            pull_bytes.clone(),
        );
        registry.register_with_unit(
            "pull_duration",
            "Duration of image pulls that went to the registry",
            Unit::Seconds,
            pull_duration.clone(),
        );
        registry.register(
            "cache_hits",
            "Lookups answered by the node cache (level: image or layer)",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Lookups the node cache could not answer (level: image or layer)",
            cache_misses.clone(),
        );
        registry.register_with_unit(
            "cache_size",
            "The node cache's size on disk (blobs and unpacked layers), read at scrape time",
            Unit::Bytes,
            cache_size.clone(),
        );
        registry.register_with_unit(
            "cache_budget",
            "CVMD_CACHE_BUDGET, 0 when unset",
            Unit::Bytes,
            cache_budget.clone(),
        );
        registry.register(
            "restarts",
            "Restarts of the workspace's container on the same rootfs",
            restarts.clone(),
        );
        registry.register(
            "oom_kills",
            "Workspace processes killed by the kernel's OOM killer (its memory cgroup)",
            oom_kills.clone(),
        );
        registry.register(
            "exec_sessions",
            "Exec sessions started through the control API",
            exec_sessions.clone(),
        );
        registry.register(
            "exec_sessions_active",
            "Exec sessions running now",
            exec_active.clone(),
        );
        registry.register(
            "prefetch_runs",
            "Rounds of `cvmd prefetch --every` (outcome: ok when every image was pulled, failed otherwise)",
            prefetch_runs.clone(),
        );
        registry.register(
            "prefetch_failed_images",
            "Images the last prefetch round could not pull",
            prefetch_failed_images.clone(),
        );
        registry.register_with_unit(
            "prefetch_last_success",
            "When a prefetch round last pulled every image, in seconds since the epoch (0: never)",
            Unit::Seconds,
            prefetch_last_success.clone(),
        );
        // Every phase, so a scrape shows 0 for those not current.
        for p in Phase::ALL {
            let _ = phase.get_or_create(&PhaseLabel { phase: p.as_str() });
        }
        // Every cvmd begins in preflight (see supervisor::lifecycle).
        let first = PhaseLabel {
            phase: Phase::Preflight.as_str(),
        };
        phase.get_or_create(&first).set(1);
        phase_start.get_or_create(&first).set(0.0);
        for level in ["image", "layer"] {
            let _ = cache_hits.get_or_create(&LevelLabel { level });
            let _ = cache_misses.get_or_create(&LevelLabel { level });
        }
        Metrics {
            registry,
            phase,
            phase_start,
            phase_duration,
            pull_bytes,
            pull_duration,
            cache_hits,
            cache_misses,
            cache_size,
            cache_budget,
            restarts,
            oom_kills,
            exec_sessions,
            exec_active,
            prefetch_runs,
            prefetch_failed_images,
            prefetch_last_success,
            cache_dir: OnceLock::new(),
            render: Mutex::new(()),
        }
    }

    /// The workspace entered `to` at `start` (since cvmd started); `from`
    /// ended then after `took`.
    pub fn phase_changed(&self, from: Option<(Phase, Duration)>, to: Phase, start: Duration) {
        if let Some((from, took)) = from {
            self.phase
                .get_or_create(&PhaseLabel {
                    phase: from.as_str(),
                })
                .set(0);
            self.phase_duration
                .get_or_create(&PhaseLabel {
                    phase: from.as_str(),
                })
                .set(took.as_secs_f64());
        }
        let label = PhaseLabel { phase: to.as_str() };
        self.phase.get_or_create(&label).set(1);
        self.phase_start
            .get_or_create(&label)
            .set(start.as_secs_f64());
    }

    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// `new` OOM kills in the workspace, as the memory cgroup counted them.
    pub fn oom_killed(&self, new: u64) {
        self.oom_kills.inc_by(new);
    }

    /// The image was ready in the cache (`hit`), or had to be pulled.
    pub fn image_lookup(&self, hit: bool) {
        let label = LevelLabel { level: "image" };
        match hit {
            true => self.cache_hits.get_or_create(&label).inc(),
            false => self.cache_misses.get_or_create(&label).inc(),
        };
    }

    pub fn pulled(&self, took: Duration) {
        self.pull_duration.observe(took.as_secs_f64());
    }

    pub fn pull_event(&self, event: &PullEvent) {
        if let PullEvent::LayerDone { size, cached, .. } = event {
            let label = LevelLabel { level: "layer" };
            if *cached {
                self.cache_hits.get_or_create(&label).inc();
            } else {
                self.cache_misses.get_or_create(&label).inc();
                self.pull_bytes.inc_by(*size);
            }
        }
    }

    /// Reports the size of the cache at `dir` on every scrape, against
    /// `budget`. Only the first call counts (one cache per cvmd).
    pub fn watch_cache(&self, dir: PathBuf, budget: Option<u64>) {
        let _ = self.cache_dir.set(dir);
        self.cache_budget.set(gauge_value(budget.unwrap_or(0)));
    }

    /// A prefetch round ended with `failed` images not pulled.
    pub fn prefetch_round(&self, failed: usize) {
        let outcome = if failed == 0 { "ok" } else { "failed" };
        self.prefetch_runs
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.prefetch_failed_images
            .set(i64::try_from(failed).unwrap_or(i64::MAX));
        if failed == 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.prefetch_last_success
                .set(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        }
    }

    /// One exec session began; the guard ends it when dropped.
    pub fn exec_started(&self) -> ExecGuard<'_> {
        self.exec_sessions.inc();
        self.exec_active.inc();
        ExecGuard(self)
    }

    /// The OpenMetrics text of every metric now.
    pub fn render(&self) -> String {
        let _one = self.render.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = self.cache_dir.get() {
            match crate::store::gc::usage_of(dir) {
                Ok(bytes) => {
                    self.cache_size.set(gauge_value(bytes));
                }
                Err(e) => tracing::debug!(error = %e, "cannot measure the cache for metrics"),
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Held for the life of an exec session.
#[derive(Debug)]
pub struct ExecGuard<'a>(&'a Metrics);

impl Drop for ExecGuard<'_> {
    fn drop(&mut self) {
        self.0.exec_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn names_follow_the_conventions_and_values_what_happened() {
        let m = Metrics::new();
        m.phase_changed(None, Phase::Pull, Duration::from_millis(100));
        m.phase_changed(
            Some((Phase::Pull, Duration::from_millis(1500))),
            Phase::Rootfs,
            Duration::from_millis(1600),
        );
        m.image_lookup(false);
        m.pull_event(&PullEvent::LayerDone {
            digest: Digest::of(b"a"),
            size: 1234,
            cached: false,
        });
        m.pull_event(&PullEvent::LayerDone {
            digest: Digest::of(b"b"),
            size: 99,
            cached: true,
        });
        m.pulled(Duration::from_secs(2));
        {
            let _g = m.exec_started();
            assert!(m.render().contains("cvmd_exec_sessions_active 1\n"));
        }
        let t = m.render();
        assert_eq!(
            line(&t, "cvmd_pull_bytes_total "),
            "cvmd_pull_bytes_total 1234"
        );
        assert_eq!(
            line(&t, "cvmd_cache_misses_total{level=\"layer\"}"),
            "cvmd_cache_misses_total{level=\"layer\"} 1"
        );
        assert_eq!(
            line(&t, "cvmd_cache_hits_total{level=\"layer\"}"),
            "cvmd_cache_hits_total{level=\"layer\"} 1"
        );
        assert_eq!(
            line(&t, "cvmd_cache_misses_total{level=\"image\"}"),
            "cvmd_cache_misses_total{level=\"image\"} 1"
        );
        assert_eq!(
            line(&t, "cvmd_phase_duration_seconds{phase=\"pull\"}"),
            "cvmd_phase_duration_seconds{phase=\"pull\"} 1.5"
        );
        assert_eq!(
            line(&t, "cvmd_phase_start_seconds{phase=\"rootfs\"}"),
            "cvmd_phase_start_seconds{phase=\"rootfs\"} 1.6"
        );
        assert_eq!(
            line(&t, "cvmd_workspace_phase{phase=\"rootfs\"}"),
            "cvmd_workspace_phase{phase=\"rootfs\"} 1"
        );
        assert_eq!(
            line(&t, "cvmd_workspace_phase{phase=\"pull\"}"),
            "cvmd_workspace_phase{phase=\"pull\"} 0"
        );
        assert_eq!(
            line(&t, "cvmd_pull_duration_seconds_count"),
            "cvmd_pull_duration_seconds_count 1"
        );
        assert_eq!(
            line(&t, "cvmd_exec_sessions_total"),
            "cvmd_exec_sessions_total 1"
        );
        assert_eq!(
            line(&t, "cvmd_exec_sessions_active"),
            "cvmd_exec_sessions_active 0"
        );
        assert_eq!(line(&t, "cvmd_oom_kills_total"), "cvmd_oom_kills_total 0");
        assert!(t.ends_with("# EOF\n"), "OpenMetrics text ends with EOF");
    }

    #[test]
    fn the_cache_is_measured_at_scrape_time() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        m.watch_cache(dir.path().to_path_buf(), Some(1 << 30));
        crate::store::ContentStore::open(dir.path()).unwrap();
        crate::store::layers::LayerCache::open(dir.path()).unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("x"), vec![0u8; 1000]).unwrap();
        let t = m.render();
        assert_eq!(
            line(&t, "cvmd_cache_size_bytes "),
            "cvmd_cache_size_bytes 1000"
        );
        assert_eq!(
            line(&t, "cvmd_cache_budget_bytes "),
            "cvmd_cache_budget_bytes 1073741824"
        );
    }
}
