//! Live counters of a run, the periodic tick that balances workers and reports progress, and the
//! final summary built from the same counters.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::balance::{allocate, Demand};
use crate::{lock, Mode, StageOptions, Workers};

/// Counters of one stage, updated by its workers without locks.
#[derive(Debug)]
pub(crate) struct StageStats {
    /// The stage's name.
    pub name: String,
    /// The stage's settings.
    pub options: StageOptions,
    /// Items taken from the input.
    pub received: AtomicU64,
    /// Items passed on downstream.
    pub out: AtomicU64,
    /// Items sent to the failures output.
    pub failed: AtomicU64,
    /// Item attempts repeated after a transient error.
    pub retries: AtomicU64,
    /// Workers replaced after a panic, a broken-worker error or a failed setup.
    pub restarts: AtomicU64,
    /// Nanoseconds spent inside `process`, over all workers.
    pub busy_ns: AtomicU64,
    /// Item attempts timed in `busy_ns`.
    pub timed_items: AtomicU64,
    /// Workers running now.
    pub alive: AtomicUsize,
    /// Workers wanted by the balancer (or the fixed count).
    pub target: AtomicUsize,
    /// Most workers that ran at once.
    pub peak_workers: AtomicUsize,
    /// Smoothed busy seconds per item per worker, `None` until measured.
    pub secs_per_item: Mutex<Option<f64>>,
    /// Busy time and items already folded into `secs_per_item`.
    seen: Mutex<(u64, u64)>,
    /// When the first worker started and when the last one stopped.
    pub span: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl StageStats {
    pub fn new(name: String, options: StageOptions) -> Self {
        StageStats {
            name,
            options,
            received: AtomicU64::new(0),
            out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            timed_items: AtomicU64::new(0),
            alive: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            peak_workers: AtomicUsize::new(0),
            secs_per_item: Mutex::new(None),
            seen: Mutex::new((0, 0)),
            span: Mutex::new((None, None)),
        }
    }

    pub fn started(&self) {
        let mut span = lock(&self.span);
        span.0.get_or_insert_with(Instant::now);
    }

    pub fn finished(&self) {
        lock(&self.span).1 = Some(Instant::now());
    }

    /// Folds the time measured since the last call into the smoothed seconds per item.
    fn measure(&self) -> Option<f64> {
        let busy = self.busy_ns.load(Relaxed);
        let items = self.timed_items.load(Relaxed);
        let mut seen = lock(&self.seen);
        let mut smoothed = lock(&self.secs_per_item);
        let (d_busy, d_items) = (busy - seen.0, items - seen.1);
        if d_items > 0 {
            let now = d_busy as f64 / 1e9 / d_items as f64;
            // Weight by the evidence: a tick with one slow item should not swing the estimate.
            *smoothed = Some(match *smoothed {
                None => now,
                Some(prev) => 0.6 * prev + 0.4 * now,
            });
            *seen = (busy, items);
        }
        *smoothed
    }
}

/// Counters of the source.
#[derive(Debug, Default)]
pub(crate) struct SourceStats {
    /// Items read from the input, before sharding and skipping.
    pub read: AtomicU64,
    /// Items that belong to another shard.
    pub other_shards: AtomicU64,
    /// Items whose output already exists.
    pub skipped: AtomicU64,
    /// Items passed to the first stage.
    pub emitted: AtomicU64,
    /// The input's length when it is known up front.
    pub total: Option<u64>,
}

/// Something that can change a stage's worker count while it runs.
pub(crate) trait Resize: Send + Sync {
    fn resize(&self, workers: usize);
}

/// Pool sizes the balancer works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pools {
    pub cpus: f64,
    pub gpus: f64,
}

/// A started stage, with the handle that resizes it when it is balanced.
pub(crate) type LiveStage = (Arc<StageStats>, Option<Arc<dyn Resize>>);

/// Balances the auto-sized stages of each pool; fixed stages take their share first.
pub(crate) fn rebalance(stages: &[LiveStage], pools: Pools) {
    for gpu_pool in [false, true] {
        let cost = |s: &StageStats| {
            if gpu_pool {
                s.options.gpus
            } else {
                s.options.cpus
            }
        };
        let in_pool: Vec<_> = stages
            .iter()
            .filter(|(s, _)| s.options.uses_gpu() == gpu_pool)
            .collect();
        let capacity = if gpu_pool { pools.gpus } else { pools.cpus };
        let fixed: f64 = in_pool
            .iter()
            .filter_map(|(s, _)| s.options.workers.fixed().map(|n| n as f64 * cost(s)))
            .sum();
        let auto: Vec<_> = in_pool
            .iter()
            .filter(|(s, _)| s.options.workers == Workers::Auto)
            .filter_map(|(s, r)| r.as_ref().map(|r| (s, r)))
            .collect();
        let demands: Vec<Demand> = auto
            .iter()
            .map(|(s, _)| Demand {
                cost: cost(s),
                secs_per_item: s.measure(),
                current: s.target.load(Relaxed).max(1),
            })
            .collect();
        let targets = allocate((capacity - fixed).max(0.0), &demands);
        for ((s, control), n) in auto.iter().zip(targets) {
            if n != s.target.load(Relaxed) {
                tracing::debug!(stage = %s.name, from = s.target.load(Relaxed), to = n, "rebalance");
                control.resize(n);
            }
        }
    }
}

/// Where the periodic progress report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bars on a terminal, a log line now and then otherwise.
    Auto,
    /// Bars on standard error.
    Bars,
    /// An `info` log line every ten seconds.
    Log,
    /// Nothing until the summary.
    Off,
}

/// Reports progress on bars or in logs, and exports Prometheus gauges.
pub(crate) struct Reporter {
    bars: Option<(indicatif::MultiProgress, Vec<indicatif::ProgressBar>)>,
    last_log: Instant,
    log_every: Option<Duration>,
}

impl Reporter {
    pub fn new(progress: Progress, stages: &[String], total: Option<u64>) -> Self {
        let bars = match progress {
            Progress::Bars => true,
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Log | Progress::Off => false,
        };
        let log_every = match progress {
            Progress::Off => None,
            _ if bars => None,
            _ => Some(Duration::from_secs(10)),
        };
        let bars = bars.then(|| {
            let multi = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>16} {bar:30} {pos:>9}/{len:9} {per_sec:>12} eta {eta:>4} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            let list = stages
                .iter()
                .map(|s| {
                    let bar = multi.add(indicatif::ProgressBar::new(total.unwrap_or(0)));
                    bar.set_style(style.clone());
                    bar.set_prefix(s.clone());
                    bar
                })
                .collect();
            (multi, list)
        });
        Reporter {
            bars,
            last_log: Instant::now(),
            log_every,
        }
    }

    pub fn tick(&mut self, stages: &[Arc<StageStats>], source: &SourceStats) {
        for s in stages {
            let stage = || ("stage", s.name.clone());
            let items = |outcome: &'static str| [stage(), ("outcome", outcome.into())];
            metrics::gauge!("sluice_pipeline_workers", &[stage()])
                .set(s.alive.load(Relaxed) as f64);
            metrics::gauge!("sluice_pipeline_workers_target", &[stage()])
                .set(s.target.load(Relaxed) as f64);
            metrics::counter!("sluice_pipeline_items_total", &items("ok"))
                .absolute(s.out.load(Relaxed));
            metrics::counter!("sluice_pipeline_items_total", &items("failed"))
                .absolute(s.failed.load(Relaxed));
            metrics::counter!("sluice_pipeline_received_total", &[stage()])
                .absolute(s.received.load(Relaxed));
            metrics::counter!("sluice_pipeline_retries_total", &[stage()])
                .absolute(s.retries.load(Relaxed));
            metrics::counter!("sluice_pipeline_restarts_total", &[stage()])
                .absolute(s.restarts.load(Relaxed));
            // Milliseconds keep sub-second resolution in an integer counter.
            metrics::counter!("sluice_pipeline_busy_milliseconds_total", &[stage()])
                .absolute(s.busy_ns.load(Relaxed) / 1_000_000);
        }
        let source_items = |outcome: &'static str| [("outcome", outcome)];
        for (outcome, n) in [
            ("emitted", &source.emitted),
            ("skipped", &source.skipped),
            ("other_shard", &source.other_shards),
        ] {
            metrics::counter!("sluice_pipeline_source_items_total", &source_items(outcome))
                .absolute(n.load(Relaxed));
        }
        if let Some((_, bars)) = &self.bars {
            let total = source.total.unwrap_or_else(|| source.emitted.load(Relaxed));
            for (s, bar) in stages.iter().zip(bars) {
                bar.set_length(total.saturating_sub(
                    source.skipped.load(Relaxed) + source.other_shards.load(Relaxed),
                ));
                bar.set_position(s.out.load(Relaxed) + s.failed.load(Relaxed));
                bar.set_message(format!(
                    "{} workers, {} failed",
                    s.alive.load(Relaxed),
                    s.failed.load(Relaxed)
                ));
            }
        }
        if let Some(every) = self.log_every {
            if self.last_log.elapsed() >= every {
                self.last_log = Instant::now();
                for s in stages {
                    tracing::info!(
                        stage = %s.name,
                        done = s.out.load(Relaxed),
                        failed = s.failed.load(Relaxed),
                        workers = s.alive.load(Relaxed),
                        "progress"
                    );
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some((multi, bars)) = self.bars {
            for bar in bars {
                bar.finish();
            }
            let _ = multi.clear();
        }
    }
}

/// Runs `tick` every `every` on a thread until `stop` is set.
pub(crate) fn every(
    every: Duration,
    stop: Arc<AtomicBool>,
    mut tick: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sluice-monitor".into())
        .spawn(move || {
            while !stop.load(Relaxed) {
                std::thread::park_timeout(every);
                tick();
            }
        })
        .expect("spawning the monitor thread")
}

/// One stage's figures in the run summary.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StageSummary {
    /// The stage's name.
    pub name: String,
    /// Items taken from the input.
    pub items_in: u64,
    /// Items passed on.
    pub items_out: u64,
    /// Items sent to the failures output.
    pub failed: u64,
    /// Item attempts repeated after transient errors.
    pub retries: u64,
    /// Workers replaced.
    pub restarts: u64,
    /// Workers at the end of the run (balanced or fixed).
    pub workers: usize,
    /// Most workers at once.
    pub peak_workers: usize,
    /// Seconds from the first worker's start to the last one's stop.
    pub seconds: f64,
    /// Items out per second over `seconds`.
    pub items_per_s: f64,
    /// Busy seconds inside `process`, summed over workers.
    pub busy_seconds: f64,
    /// Measured items per second of one worker while busy.
    pub per_worker_items_per_s: Option<f64>,
}

/// One item that failed, as written to the failures output.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Failure {
    /// The stage where it failed.
    pub stage: String,
    /// The item's key.
    pub key: String,
    /// What went wrong.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// Position in the input (after sharding and skipping), used to keep outputs in order.
    #[serde(skip)]
    pub seq: u64,
}

/// What a run did, printed at the end and written as JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunSummary {
    /// `completed`, or `aborted` with the reason in `error`.
    pub status: String,
    /// Why the run stopped early.
    pub error: Option<String>,
    /// The mode the run used.
    pub mode: Mode,
    /// This process's shard, as `INDEX/COUNT`.
    pub shard: String,
    /// Items read from the source.
    pub items_read: u64,
    /// Items left to other shards.
    pub other_shards: u64,
    /// Items skipped because their output already existed.
    pub skipped: u64,
    /// Items that entered the first stage.
    pub items_in: u64,
    /// Items written by the sink.
    pub items_out: u64,
    /// Items that failed in any stage.
    pub failed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Per-stage figures, in pipeline order.
    pub stages: Vec<StageSummary>,
    /// Batch mode: spill files written between stages.
    pub spilled_chunks: usize,
    /// The first failures (all of them are in the failures file).
    pub failures: Vec<Failure>,
}

impl RunSummary {
    /// A short human-readable report for the end of a run.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} read, {} skipped, {} other shards, {} in, {} out, {} failed in {:.2}s ({} mode)\n",
            self.status,
            self.items_read,
            self.skipped,
            self.other_shards,
            self.items_in,
            self.items_out,
            self.failed,
            self.seconds,
            self.mode
        );
        for s in &self.stages {
            out.push_str(&format!(
                "  {:<16} in {:>9} out {:>9} failed {:>6} workers {:>3} (peak {:>3}) {:>10.1} items/s{}\n",
                s.name,
                s.items_in,
                s.items_out,
                s.failed,
                s.workers,
                s.peak_workers,
                s.items_per_s,
                s.per_worker_items_per_s.map(|r| format!(", {r:.1}/s per worker")).unwrap_or_default()
            ));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("  error: {e}\n"));
        }
        out
    }
}

pub(crate) fn stage_summary(s: &StageStats) -> StageSummary {
    let (start, end) = *lock(&s.span);
    let seconds = match (start, end) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        (Some(a), None) => a.elapsed().as_secs_f64(),
        _ => 0.0,
    };
    let out = s.out.load(Relaxed);
    let busy = s.busy_ns.load(Relaxed) as f64 / 1e9;
    let timed = s.timed_items.load(Relaxed);
    StageSummary {
        name: s.name.clone(),
        items_in: s.received.load(Relaxed),
        items_out: out,
        failed: s.failed.load(Relaxed),
        retries: s.retries.load(Relaxed),
        restarts: s.restarts.load(Relaxed),
        workers: s.target.load(Relaxed),
        peak_workers: s.peak_workers.load(Relaxed),
        seconds,
        items_per_s: if seconds > 0.0 {
            out as f64 / seconds
        } else {
            0.0
        },
        busy_seconds: busy,
        per_worker_items_per_s: (busy > 0.0 && timed > 0).then(|| timed as f64 / busy),
    }
}

/// Describes the metrics a run records (for `# HELP` lines); call once a recorder is installed.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!("sluice_pipeline_workers", "Workers running now, by stage");
    describe_gauge!(
        "sluice_pipeline_workers_target",
        "Workers the balancer (or a fixed count) wants, by stage"
    );
    describe_counter!(
        "sluice_pipeline_items_total",
        "Items a stage finished, by stage and outcome (ok, failed)"
    );
    describe_counter!(
        "sluice_pipeline_received_total",
        "Items a stage took from its input"
    );
    describe_counter!(
        "sluice_pipeline_retries_total",
        "Item attempts repeated after a transient error, by stage"
    );
    describe_counter!(
        "sluice_pipeline_restarts_total",
        "Workers replaced, by stage"
    );
    describe_counter!(
        "sluice_pipeline_busy_milliseconds_total",
        Unit::Milliseconds,
        "Time spent inside process(), summed over a stage's workers"
    );
    describe_counter!(
        "sluice_pipeline_source_items_total",
        "Items read from the source, by outcome (emitted, skipped, other_shard)"
    );
}
