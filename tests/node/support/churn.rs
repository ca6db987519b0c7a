//! Pods starting, stopping, restarting and being SIGKILLed on one node,
//! with gc and prefetch pods beside them and a registry outage in the
//! middle: what the churn test asserts on and the soak benchmark measures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{checks, fixtures, Exit, Node, PodConfig};

pub struct ChurnConfig {
    pub pods: usize,
    pub duration: Duration,
    pub images: Vec<String>,
    /// `cvmd gc --budget` of the gc pods, and `CVMD_CACHE_BUDGET` of the
    /// workspace pods.
    pub budget: String,
    pub gc_every: Duration,
    pub prefetch_every: Duration,
    /// Of the starts, how many in a hundred end by SIGKILL (half of them
    /// before the workspace runs, at a random moment).
    pub kill_percent: u64,
    /// Stop the registry for a few seconds halfway through.
    pub registry_outage: bool,
    pub seed: u64,
}

#[derive(Debug)]
pub enum Outcome {
    /// Reached running after this long (from `runc create`).
    Running(Duration),
    /// Ended before running with this one error line.
    Failed(String),
    /// SIGKILLed before it ran (on purpose).
    Killed,
}

#[derive(Debug)]
pub struct Start {
    pub pod: String,
    pub image: String,
    /// The image was in the cache already (the pod did not pull it).
    pub cached: bool,
    pub outcome: Outcome,
    /// When the pod was created and when it ended.
    pub began: Instant,
    pub ended: Instant,
}

impl Start {
    /// Whether the start overlapped `window` (a registry outage).
    pub fn overlaps(&self, window: Option<(Instant, Instant)>) -> bool {
        window.is_some_and(|(from, to)| self.began <= to && self.ended >= from)
    }
}

#[derive(Default)]
pub struct ChurnReport {
    pub starts: Vec<Start>,
    /// Broken promises: panics, failures without one clear error line,
    /// workspaces that could not read their image, unclean stops.
    pub problems: Vec<String>,
    pub one_shots: usize,
    /// Peak RSS of cvmd (PID 1) per pod slot, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    pub cache_peak_bytes: u64,
    /// When the registry was down.
    pub outage: Option<(Instant, Instant)>,
    pub elapsed: Duration,
}

/// xorshift64*: a seeded sequence, printed by the caller, so a failing
/// run can be replayed; ten lines need no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Shared<'a> {
    node: &'a Node,
    cfg: &'a ChurnConfig,
    deadline: Instant,
    report: Mutex<ChurnReport>,
    cache_peak: AtomicU64,
}

impl Shared<'_> {
    fn problem(&self, p: String) {
        eprintln!("churn problem: {p}");
        self.report.lock().unwrap().problems.push(p);
    }
}

pub fn churn(node: &Node, cfg: &ChurnConfig) -> ChurnReport {
    let started = Instant::now();
    let shared = Shared {
        node,
        cfg,
        deadline: started + cfg.duration,
        report: Mutex::new(ChurnReport::default()),
        cache_peak: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        for slot in 0..cfg.pods {
            let shared = &shared;
            s.spawn(move || workspaces(shared, slot));
        }
        s.spawn(|| one_shots(&shared));
        s.spawn(|| {
            while Instant::now() < shared.deadline {
                let size = dir_bytes(&node.cache_dir());
                shared.cache_peak.fetch_max(size, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        if cfg.registry_outage {
            s.spawn(|| {
                std::thread::sleep(cfg.duration / 2);
                let from = Instant::now();
                node.stop_registry();
                std::thread::sleep(Duration::from_secs(3));
                node.start_registry();
                shared.report.lock().unwrap().outage = Some((from, Instant::now()));
            });
        }
    });
    let mut report = shared.report.into_inner().unwrap();
    report.cache_peak_bytes = shared.cache_peak.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    report
}

/// One pod slot: pods one after the other until the deadline, each either
/// a restart of the previous one (same name, image and state dir) or a new
/// pod with an image picked at random.
fn workspaces(sh: &Shared, slot: usize) {
    let mut rng = Rng(sh.cfg.seed ^ (slot as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut current: Option<(String, String, PathBuf)> = None;
    let mut generation = 0;
    while Instant::now() < sh.deadline {
        let (name, image, state) = match current.take() {
            Some(pod) if rng.below(2) == 0 => pod,
            _ => {
                generation += 1;
                let pick = rng.below(sh.cfg.images.len() as u64);
                let image = sh.cfg.images[usize::try_from(pick).unwrap()].clone();
                let name = format!("ws{slot}g{generation}");
                let state = sh.node.state_dir(&name);
                (name, image, state)
            }
        };
        let cfg = PodConfig::run(&name, &image)
            .env("CVMD_CACHE_BUDGET", &sh.cfg.budget)
            .restarted(&state);
        let start = one_start(sh, &mut rng, cfg, slot);
        sh.report.lock().unwrap().starts.push(start);
        current = Some((name, image, state));
    }
}

fn one_start(sh: &Shared, rng: &mut Rng, cfg: PodConfig, slot: usize) -> Start {
    let image = cfg
        .env
        .iter()
        .find(|(k, _)| k == "CVMD_IMAGE")
        .unwrap()
        .1
        .clone();
    let began = Instant::now();
    let mut pod = sh.node.start(cfg);
    let fate = rng.below(100);
    let outcome = if fate < sh.cfg.kill_percent / 2 {
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        let ran = pod.exec(&["cvmctl", "status", "--ready"]).status.success();
        let ended_by_itself = pod.try_exit().is_some();
        pod.kill();
        if ended_by_itself {
            let log = pod.log();
            return Start {
                outcome: Outcome::Failed(checks::one_error_line(&log).unwrap_or_else(|e| {
                    sh.problem(format!("{}: {e}:\n{log}", pod.id()));
                    e
                })),
                pod: pod.id().to_string(),
                image,
                cached: !log.contains("\"message\":\"pulled\""),
                began,
                ended: Instant::now(),
            };
        }
        if ran {
            Outcome::Running(Duration::ZERO)
        } else {
            Outcome::Killed
        }
    } else {
        match pod.wait_running(Duration::from_secs(90)) {
            Ok(ready) => {
                std::thread::sleep(Duration::from_millis(rng.below(2000)));
                let check = pod.exec(&[&["cvmctl", "exec", "--"][..], fixtures::CHECK].concat());
                if !check.status.success() {
                    sh.problem(format!(
                        "{}: the workspace of {image} cannot read its image: {}{}",
                        pod.id(),
                        String::from_utf8_lossy(&check.stdout),
                        String::from_utf8_lossy(&check.stderr)
                    ));
                }
                for p in checks::missing_mounted_layers(&pod, &sh.node.cache_dir()) {
                    sh.problem(p);
                }
                if let Some(kib) = pod.peak_rss_kib() {
                    let mut r = sh.report.lock().unwrap();
                    let peak = r.peak_rss_kib.entry(format!("slot {slot}")).or_default();
                    *peak = (*peak).max(kib);
                }
                if fate < sh.cfg.kill_percent {
                    pod.kill();
                } else {
                    let exit = pod.stop(Duration::from_secs(20));
                    if exit != Exit::Code(0) {
                        sh.problem(format!(
                            "{}: stopped with {exit:?}:\n{}",
                            pod.id(),
                            pod.log()
                        ));
                    }
                }
                Outcome::Running(ready)
            }
            Err(why) => {
                pod.stop(Duration::from_secs(20));
                let log = pod.log();
                match checks::one_error_line(&log) {
                    Ok(line) => {
                        // Kubernetes shows the same line as the pod's
                        // termination message.
                        let message = pod.termination_message();
                        if Some(message.trim_end()) != line.strip_prefix("cvmd: error: ") {
                            sh.problem(format!(
                                "{}: termination message {message:?} is not the error line {line:?}",
                                pod.id()
                            ));
                        }
                        Outcome::Failed(line)
                    }
                    Err(e) => {
                        sh.problem(format!("{why}: {e}:\n{log}"));
                        Outcome::Failed(why)
                    }
                }
            }
        }
    };
    let log = pod.log();
    if !checks::panics(&log).is_empty() {
        sh.problem(format!("{} panicked:\n{log}", pod.id()));
    }
    Start {
        pod: pod.id().to_string(),
        image,
        cached: !log.contains("\"message\":\"pulled\""),
        outcome,
        began,
        ended: Instant::now(),
    }
}

/// gc and prefetch pods, one at a time, each on its own schedule.
fn one_shots(sh: &Shared) {
    let refs: Vec<&str> = sh.cfg.images.iter().map(String::as_str).collect();
    let mut next_gc = Instant::now() + sh.cfg.gc_every;
    let mut next_prefetch = Instant::now() + sh.cfg.prefetch_every;
    let mut n = 0;
    while Instant::now() < sh.deadline {
        let cfg = if Instant::now() >= next_gc {
            next_gc += sh.cfg.gc_every;
            PodConfig::gc(&format!("gc{n}"), &sh.cfg.budget)
        } else if Instant::now() >= next_prefetch {
            next_prefetch += sh.cfg.prefetch_every;
            PodConfig::prefetch(&format!("prefetch{n}"), &refs)
        } else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        n += 1;
        let (exit, log) = sh.node.run_once(cfg, Duration::from_secs(120));
        sh.report.lock().unwrap().one_shots += 1;
        if !checks::panics(&log).is_empty() {
            sh.problem(format!("one-shot pod {n} panicked:\n{log}"));
        } else if exit != Exit::Code(0) {
            if let Err(e) = checks::one_error_line(&log) {
                sh.problem(format!("one-shot pod {n} ended {exit:?}: {e}:\n{log}"));
            }
        }
    }
}

/// Bytes the files under `dir` take on disk.
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}
