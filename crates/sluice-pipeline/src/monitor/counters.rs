//! The live counters of a run: per stage (items, failures, busy time, workers) and for the
//! source; the balancer, the progress line and the summary all read them.

use crate::{lock, StageOptions};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

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
    pub(super) fn measure(&self) -> Option<f64> {
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
