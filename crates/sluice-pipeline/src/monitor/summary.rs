//! The run summary built from the counters, the failures it lists, and the metrics described.

use super::*;
use crate::{lock, Mode};
use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;

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
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for &(name, kind, _, help) in METRICS {
        match kind {
            "counter" => describe_counter!(name, help),
            "gauge" => describe_gauge!(name, help),
            _ => describe_histogram!(name, Unit::Seconds, help),
        }
    }
}

/// Every metric a run records: name, type, labels and help (also the generated reference,
/// `docs/reference/metrics.md`).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "sluice_pipeline_workers",
        "gauge",
        "stage",
        "Workers running now, by stage",
    ),
    (
        "sluice_pipeline_workers_target",
        "gauge",
        "stage",
        "Workers the balancer (or a fixed count) wants, by stage",
    ),
    (
        "sluice_pipeline_items_total",
        "counter",
        "stage, outcome",
        "Items a stage finished, by stage and outcome (ok, failed)",
    ),
    (
        "sluice_pipeline_received_total",
        "counter",
        "stage",
        "Items a stage took from its input",
    ),
    (
        "sluice_pipeline_retries_total",
        "counter",
        "stage",
        "Item attempts repeated after a transient error, by stage",
    ),
    (
        "sluice_pipeline_restarts_total",
        "counter",
        "stage",
        "Workers replaced, by stage",
    ),
    (
        "sluice_pipeline_batch_seconds",
        "histogram",
        "stage",
        "Time of each process() call, by stage; its _sum is the stage's busy time summed over \
         workers",
    ),
    (
        "sluice_pipeline_source_items_total",
        "counter",
        "outcome",
        "Items read from the source, by outcome (emitted, skipped, other_shard)",
    ),
];
