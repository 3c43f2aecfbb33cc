//! The executors' moving parts: a worker's retry/restart logic (shared by all modes), a streaming
//! stage's pool of worker threads, and debug mode's one-thread iterator.
//!
//! Workers are OS threads that own their stage instance. A stage's workers share one bounded input
//! channel (crossbeam's MPMC channel; `std` has no stable multi-consumer channel) and each holds
//! its own clone of the input receiver and output sender, so that when a stage's last worker exits
//! the channels around it disconnect and the stages before and after it wind down on their own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::monitor::{Failure, LiveStage, Resize, StageStats};
use crate::{lock, Envelope, ItemError, Key, Stage, WorkerContext};

/// Makes a fresh, not yet set up, instance of a stage for a new worker.
pub(crate) type Factory<S> = Arc<dyn Fn() -> S + Send + Sync>;

/// An item's position and key, kept beside its value while a batch is processed.
type Meta = (u64, Key);

/// State shared by every part of one run.
pub(crate) struct Shared {
    /// Where failed items go; `None` once every worker has stopped.
    pub failures: Mutex<Option<Sender<Failure>>>,
    /// Set when the run must stop early.
    pub aborted: AtomicBool,
    /// Why the run stopped early.
    pub abort_reason: Mutex<Option<String>>,
    /// Worker and source threads, joined at the end of the run.
    pub threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Every stage started so far, with the handle that resizes it when it is balanced.
    pub stages: Mutex<Vec<LiveStage>>,
    /// GPUs handed out to GPU workers, round robin.
    pub next_gpu: AtomicUsize,
    /// Size of the GPU pool, for device numbers.
    pub gpus: f64,
    /// Longest a streaming stage waits to fill a batch once it holds an item.
    pub batch_wait: Option<Duration>,
    /// The run's scratch directory (owned by the run, removed when it is over).
    pub scratch: std::path::PathBuf,
}

impl Shared {
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Relaxed)
    }

    /// Stops the run; the first reason given is the one reported.
    pub fn abort(&self, reason: String) {
        let mut r = lock(&self.abort_reason);
        if r.is_none() {
            tracing::error!("{reason}");
            *r = Some(reason);
        }
        self.aborted.store(true, Relaxed);
    }

    fn fail(&self, failure: Failure) {
        if let Some(tx) = &*lock(&self.failures) {
            let _ = tx.send(failure);
        }
    }

    /// Closes the failures channel: the failures writer finishes once the workers' copies go.
    pub fn close_failures(&self) {
        drop(lock(&self.failures).take());
    }

    /// Starts a thread that the end of the run joins.
    pub fn spawn_named(&self, name: String, f: impl FnOnce() + Send + 'static) {
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .expect("spawning a worker thread");
        lock(&self.threads).push(handle);
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into())
}

/// One worker's stage instance plus the retry and restart rules around it.
pub(crate) struct WorkerCore<S: Stage> {
    make: Factory<S>,
    stats: Arc<StageStats>,
    shared: Arc<Shared>,
    context: WorkerContext,
    instance: Option<S>,
}

impl<S: Stage> WorkerCore<S> {
    pub fn new(
        make: Factory<S>,
        stats: Arc<StageStats>,
        shared: Arc<Shared>,
        worker: usize,
    ) -> Self {
        let gpu = stats.options.uses_gpu().then(|| {
            let gpus = shared.gpus.ceil().max(1.0) as usize;
            shared.next_gpu.fetch_add(1, Relaxed) % gpus
        });
        let context = WorkerContext {
            stage: stats.name.clone(),
            worker,
            gpu,
            scratch: shared.scratch.clone(),
        };
        WorkerCore {
            make,
            stats,
            shared,
            context,
            instance: None,
        }
    }

    /// Makes and sets up an instance if there is none; false when the run is aborted.
    pub fn ready(&mut self) -> bool {
        let mut attempt = 0;
        while self.instance.is_none() {
            if self.shared.is_aborted() {
                return false;
            }
            let made = catch_unwind(AssertUnwindSafe(|| {
                let mut stage = (self.make)();
                stage.setup(&self.context).map(|_| stage)
            }));
            let reason = match made {
                Ok(Ok(stage)) => {
                    self.instance = Some(stage);
                    break;
                }
                Ok(Err(e)) if e.is_fatal() => {
                    self.shared.abort(format!(
                        "stage {}: setup failed: {e} (not retried: every worker would fail \
                         the same way)",
                        self.stats.name
                    ));
                    return false;
                }
                Ok(Err(e)) => format!("setup failed: {e}"),
                Err(p) => format!("setup panicked: {}", panic_message(&*p)),
            };
            if !self.broken(reason) {
                return false;
            }
            attempt += 1;
            std::thread::sleep(self.backoff(attempt).min(Duration::from_secs(1)));
        }
        true
    }

    /// Counts a replaced worker; past the stage's limit the run is aborted and false returned.
    fn broken(&self, reason: String) -> bool {
        let n = self.stats.restarts.fetch_add(1, Relaxed) + 1;
        let limit = self.stats.options.max_restarts;
        if n > limit as u64 {
            self.shared.abort(format!(
                "stage {}: {n} workers broke, more than its limit of {limit}; last: {reason}",
                self.stats.name
            ));
            false
        } else {
            tracing::warn!(stage = %self.stats.name, worker = self.context.worker, "restarting worker: {reason}");
            true
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.stats.options.retry_backoff;
        base.saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(Duration::from_secs(30))
    }

    fn fail(&self, (seq, key): (u64, Key), error: String, attempts: u32) {
        self.stats.failed.fetch_add(1, Relaxed);
        self.shared.fail(Failure {
            stage: self.stats.name.clone(),
            key: key.to_string(),
            error,
            attempts,
            seq,
        });
    }

    /// Fails every item of `metas` with the same `error`.
    fn fail_all(&self, metas: Vec<Meta>, error: &str, attempts: u32) {
        for meta in metas {
            self.fail(meta, error.to_string(), attempts);
        }
    }

    /// Processes a batch with retries; outputs go to `emit`, failures to the failures output.
    /// False when the run must stop (aborted, or `emit` found nobody downstream).
    pub fn run_batch(
        &mut self,
        batch: Vec<Envelope<S::In>>,
        emit: &mut dyn FnMut(Envelope<S::Out>) -> bool,
    ) -> bool {
        let (mut metas, mut values): (Vec<Meta>, Vec<S::In>) =
            batch.into_iter().map(|e| ((e.seq, e.key), e.value)).unzip();
        let mut attempt: u32 = 0;
        while !values.is_empty() {
            attempt += 1;
            let Some(stage) = self.instance.as_mut() else {
                self.fail_all(metas, "worker could not be restarted", attempt);
                return false;
            };
            let started = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| stage.process(&values)));
            self.timed(started.elapsed(), values.len());
            let broken = match result {
                Ok(Ok(results)) if results.len() == values.len() => {
                    match self.deliver(metas, values, results, attempt, emit) {
                        Some(retry) => (metas, values) = retry,
                        None => return false,
                    }
                    if !values.is_empty() {
                        std::thread::sleep(self.backoff(attempt));
                        if self.shared.is_aborted() {
                            return false;
                        }
                    }
                    continue;
                }
                Ok(Ok(results)) => {
                    let message = format!(
                        "stage returned {} results for a batch of {} items",
                        results.len(),
                        values.len()
                    );
                    self.fail_all(metas, &message, attempt);
                    return true;
                }
                Ok(Err(e)) if e.is_fatal() => {
                    let message = format!("worker failed: {e}");
                    self.fail_all(metas, &message, attempt);
                    self.shared.abort(format!(
                        "stage {}: {message} (not retried: every worker would fail the same way)",
                        self.stats.name
                    ));
                    return false;
                }
                Ok(Err(e)) => format!("worker failed: {e}"),
                Err(p) => format!("worker panicked: {}", panic_message(&*p)),
            };
            // The instance may hold broken state (a dead subprocess, a poisoned model): replace it.
            if let Some(stage) = self.instance.take() {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(stage)));
            }
            self.fail_all(metas, &broken, attempt);
            return self.broken(broken);
        }
        true
    }

    /// Counts a processed batch's time and items for balancing and the batch-time metric.
    fn timed(&self, took: Duration, items: usize) {
        self.stats
            .busy_ns
            .fetch_add(took.as_nanos() as u64, Relaxed);
        // Seconds as a histogram: its `_sum` is the busy time in the base unit (the metrics
        // facade's counters are whole numbers), its buckets the time per batch.
        metrics::histogram!("sluice_pipeline_batch_seconds", "stage" => self.stats.name.clone())
            .record(took.as_secs_f64());
        self.stats.timed_items.fetch_add(items as u64, Relaxed);
    }

    /// Passes a batch's outputs on and fails its items that failed for good; returns the items
    /// to try again (transient failures within the retry limit), or `None` when `emit` found
    /// nobody downstream.
    fn deliver(
        &self,
        metas: Vec<Meta>,
        values: Vec<S::In>,
        results: Vec<Result<S::Out, ItemError>>,
        attempt: u32,
        emit: &mut dyn FnMut(Envelope<S::Out>) -> bool,
    ) -> Option<(Vec<Meta>, Vec<S::In>)> {
        let mut retry = (Vec::new(), Vec::new());
        for ((meta, value), result) in metas.into_iter().zip(values).zip(results) {
            match result {
                Ok(out) => {
                    self.stats.out.fetch_add(1, Relaxed);
                    if !emit(Envelope {
                        seq: meta.0,
                        key: meta.1,
                        value: out,
                    }) {
                        return None;
                    }
                }
                Err(e) if e.transient && attempt <= self.stats.options.max_retries => {
                    self.stats.retries.fetch_add(1, Relaxed);
                    retry.0.push(meta);
                    retry.1.push(value);
                }
                Err(e) => self.fail(meta, e.message, attempt),
            }
        }
        Some(retry)
    }
}

/// Takes up to `n` items, waiting for a full batch unless the input ends or, once the batch
/// holds an item, `wait` passes.
fn next_batch<T>(input: &Receiver<T>, n: usize, wait: Option<Duration>) -> Vec<T> {
    let mut batch = Vec::with_capacity(n);
    let mut deadline = None;
    while batch.len() < n {
        let next = match deadline {
            Some(deadline) => input
                .recv_deadline(deadline)
                .map_err(|e| e.is_disconnected()),
            None => input.recv().map_err(|_| true),
        };
        match next {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
        if deadline.is_none() {
            deadline = wait.map(|w| Instant::now() + w);
        }
    }
    batch
}

/// A running streaming stage: its workers, and the ends of its channels for workers yet to come.
pub(crate) struct StageRun<S: Stage> {
    make: Factory<S>,
    stats: Arc<StageStats>,
    shared: Arc<Shared>,
    input: Mutex<Option<Receiver<Envelope<S::In>>>>,
    output: Mutex<Option<Sender<Envelope<S::Out>>>>,
    next_worker: AtomicUsize,
}

impl<S: Stage> StageRun<S> {
    /// Starts `workers` workers between `input` and `output`.
    pub fn start(
        make: Factory<S>,
        stats: Arc<StageStats>,
        shared: Arc<Shared>,
        input: Receiver<Envelope<S::In>>,
        output: Sender<Envelope<S::Out>>,
        workers: usize,
    ) -> Arc<Self> {
        stats.started();
        let run = Arc::new(StageRun {
            make,
            stats,
            shared,
            input: Mutex::new(Some(input)),
            output: Mutex::new(Some(output)),
            next_worker: AtomicUsize::new(0),
        });
        run.resize(workers.max(1));
        run
    }

    /// Starts one more worker; false once the stage has finished.
    fn spawn_worker(self: &Arc<Self>) -> bool {
        let (input, output) = {
            let (input, output) = (lock(&self.input), lock(&self.output));
            match (&*input, &*output) {
                (Some(i), Some(o)) => (i.clone(), o.clone()),
                _ => return false,
            }
        };
        let alive = self.stats.alive.fetch_add(1, Relaxed) + 1;
        self.stats.peak_workers.fetch_max(alive, Relaxed);
        let id = self.next_worker.fetch_add(1, Relaxed);
        let me = self.clone();
        self.shared
            .spawn_named(format!("{}-{id}", self.stats.name), move || {
                me.work(id, input, output)
            });
        true
    }

    /// Leaves if the stage has more workers than it should; the count is claimed atomically so
    /// that two workers cannot both leave for one surplus worker.
    fn try_retire(&self) -> bool {
        loop {
            let alive = self.stats.alive.load(Relaxed);
            if alive <= self.stats.target.load(Relaxed) {
                return false;
            }
            if self
                .stats
                .alive
                .compare_exchange(alive, alive - 1, Relaxed, Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }

    fn work(&self, id: usize, input: Receiver<Envelope<S::In>>, output: Sender<Envelope<S::Out>>) {
        let mut core = WorkerCore::new(
            self.make.clone(),
            self.stats.clone(),
            self.shared.clone(),
            id,
        );
        let mut retired = false;
        let batch_size = self.stats.options.batch_size.max(1);
        if core.ready() {
            loop {
                if self.shared.is_aborted() {
                    break;
                }
                if self.try_retire() {
                    retired = true;
                    break;
                }
                let batch = next_batch(&input, batch_size, self.shared.batch_wait);
                if batch.is_empty() {
                    break;
                }
                self.stats.received.fetch_add(batch.len() as u64, Relaxed);
                if !core.ready() || !core.run_batch(batch, &mut |item| output.send(item).is_ok()) {
                    break;
                }
            }
        }
        drop(core);
        drop((input, output));
        if !retired && self.stats.alive.fetch_sub(1, Relaxed) == 1 {
            // The last worker: disconnect both neighbours so the run winds down.
            lock(&self.input).take();
            lock(&self.output).take();
            self.stats.finished();
        }
    }
}

impl<S: Stage> Resize for Arc<StageRun<S>> {
    fn resize(&self, workers: usize) {
        self.stats.target.store(workers, Relaxed);
        while self.stats.alive.load(Relaxed) < workers {
            if !self.spawn_worker() {
                break;
            }
        }
    }
}

/// Debug mode: a stage as an iterator adapter, one instance, on the caller's thread.
pub(crate) struct DebugStage<S: Stage> {
    upstream: Box<dyn Iterator<Item = Envelope<S::In>>>,
    core: WorkerCore<S>,
    ready: Vec<Envelope<S::Out>>,
    done: bool,
}

impl<S: Stage> DebugStage<S> {
    pub fn new(
        upstream: Box<dyn Iterator<Item = Envelope<S::In>>>,
        make: Factory<S>,
        stats: Arc<StageStats>,
        shared: Arc<Shared>,
    ) -> Self {
        stats.started();
        stats.alive.store(1, Relaxed);
        stats.target.store(1, Relaxed);
        stats.peak_workers.store(1, Relaxed);
        DebugStage {
            upstream,
            core: WorkerCore::new(make, stats, shared, 0),
            ready: Vec::new(),
            done: false,
        }
    }
}

impl<S: Stage> Iterator for DebugStage<S> {
    type Item = Envelope<S::Out>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() && !self.done {
            let n = self.core.stats.options.batch_size.max(1);
            let batch: Vec<_> = self.upstream.by_ref().take(n).collect();
            if batch.is_empty() || !self.core.ready() {
                self.done = true;
                break;
            }
            self.core
                .stats
                .received
                .fetch_add(batch.len() as u64, Relaxed);
            let ready = &mut self.ready;
            if !self.core.run_batch(batch, &mut |item| {
                ready.push(item);
                true
            }) {
                self.done = true;
            }
            // Outputs are popped from the end; reverse so they leave in input order.
            self.ready.reverse();
        }
        let item = self.ready.pop();
        if item.is_none() && self.done {
            self.core.stats.alive.store(0, Relaxed);
            self.core.stats.finished();
        }
        item
    }
}
