//! The typed pipeline builder and `run`: the source, the stages, the collecting loop that feeds
//! the sink, and the bookkeeping (failures file, monitor, summary) around them.
//!
//! A pipeline is built as a chain of closures, each wrapping the one before: `stage()` captures
//! the previous plan and, when run, asks it for its output flow (a channel, an iterator or a
//! materialised store, by mode) and attaches its own workers to it. The chain keeps every stage's
//! types checked at compile time with no downcasting, and one builder serves all three modes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::monitor::{
    self, Failure, Pools, Progress, Reporter, Resize, RunSummary, SourceStats, StageStats,
};
use crate::store::Store;
use crate::workers::{DebugStage, Factory, Shared, StageRun};
use crate::{lock, Completed, Envelope, Mode, RunError, Shard, Sink, Stage, StageOptions, Workers};

/// What items must be to travel between stages: sendable to workers, and encodable so that batch
/// mode can spill them to disk.
pub trait Item: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Item for T {}

/// A stage's output, by mode.
pub(crate) enum Flow<T> {
    Stream(Receiver<Envelope<T>>),
    Debug(Box<dyn Iterator<Item = Envelope<T>>>),
    Stored(Store<T>),
}

/// Everything a plan needs while it is being started, and the counters the summary reads at
/// the end.
pub(crate) struct Run {
    shared: Arc<Shared>,
    mode: Mode,
    pools: Pools,
    shard: Shard,
    skip: Option<Completed>,
    source: Arc<SourceStats>,
    spill: Option<Arc<tempfile::TempDir>>,
    /// The run's scratch directory, removed when the run (and any spill store) is dropped.
    _scratch: Arc<tempfile::TempDir>,
    memory_budget: u64,
    spilled: AtomicUsize,
}

impl Run {
    /// The most workers a stage can have: its fixed count, or as many as its pool holds.
    fn max_workers(&self, options: &StageOptions) -> usize {
        if let Some(n) = options.workers.fixed() {
            return n;
        }
        let (pool, cost) = if options.uses_gpu() {
            (self.pools.gpus, options.gpus)
        } else {
            (self.pools.cpus, options.cpus)
        };
        if cost <= 0.0 {
            return pool.max(1.0) as usize;
        }
        ((pool / cost + 1e-9).floor() as usize).max(1)
    }

    fn new_store<T: Item>(&self) -> Store<T> {
        let dir = self
            .spill
            .clone()
            .expect("batch mode always has a spill directory");
        Store::new(dir, self.memory_budget)
    }

    fn register(&self, stats: Arc<StageStats>, resize: Option<Arc<dyn Resize>>) {
        lock(&self.shared.stages).push((stats, resize));
    }

    /// Starts a streaming stage's workers on `input`; balanced stages register their resize
    /// handle with the monitor.
    fn stream_stage<S: Stage>(
        &self,
        make: Factory<S>,
        stats: Arc<StageStats>,
        input: Receiver<Envelope<S::In>>,
        out_capacity: usize,
    ) -> Flow<S::Out> {
        let (tx, rx) = bounded(out_capacity);
        let workers = stats.options.workers.fixed().unwrap_or(1);
        let balanced = stats.options.workers == Workers::Auto;
        let handle = StageRun::start(make, stats.clone(), self.shared.clone(), input, tx, workers);
        let resize = balanced.then(|| Arc::new(handle) as Arc<dyn Resize>);
        self.register(stats, resize);
        Flow::Stream(rx)
    }

    /// Runs a batch stage over every stored item with `max_workers` workers, storing its outputs
    /// for the next stage.
    fn batch_stage<S>(
        &self,
        make: Factory<S>,
        stats: Arc<StageStats>,
        store: Store<S::In>,
        max_workers: usize,
    ) -> Flow<S::Out>
    where
        S: Stage,
        S::In: Item,
        S::Out: Item,
    {
        self.spilled.fetch_add(store.spilled_chunks(), Relaxed);
        let capacity = stats.options.batch_size.max(1) * max_workers;
        let (in_tx, in_rx) = bounded(capacity);
        let (tx, rx) = bounded(capacity);
        let shared = self.shared.clone();
        self.shared
            .spawn_named(format!("{}-feeder", stats.name), move || {
                for item in store.drain() {
                    match item {
                        Ok(item) => {
                            if in_tx.send(item).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            shared.abort(format!("reading spilled items back: {e}"));
                            break;
                        }
                    }
                }
            });
        self.register(stats.clone(), None);
        StageRun::start(make, stats, self.shared.clone(), in_rx, tx, max_workers);
        let mut out = self.new_store();
        for item in rx {
            if let Err(e) = out.push(item) {
                self.shared.abort(format!("spilling between stages: {e}"));
                break;
            }
        }
        Flow::Stored(out)
    }

    /// Starts the thread that shows progress and, in streaming runs, re-sizes balanced stages
    /// every `balance_every`, until `stop` is set.
    fn start_monitor(
        &self,
        stop: Arc<AtomicBool>,
        reporter: Arc<Mutex<Reporter>>,
        balance_every: Duration,
    ) -> std::thread::JoinHandle<()> {
        let (shared, source) = (self.shared.clone(), self.source.clone());
        let (mode, pools) = (self.mode, self.pools);
        let mut last_balance = Instant::now();
        monitor::every(Duration::from_millis(200), stop, move || {
            let stages = lock(&shared.stages).clone();
            if mode == Mode::Streaming
                && last_balance.elapsed() >= balance_every
                && !shared.is_aborted()
            {
                last_balance = Instant::now();
                monitor::rebalance(&stages, pools);
            }
            let stats: Vec<_> = stages.iter().map(|(s, _)| s.clone()).collect();
            lock(&reporter).tick(&stats, &source);
        })
    }

    /// What the run did, from the counters, the stages and the failures kept for the summary.
    fn summary(
        &self,
        options: &RunOptions,
        started: Instant,
        written: u64,
        failures: Vec<Failure>,
    ) -> RunSummary {
        // Taken out, not read in place: a stage's resize handle holds the shared state, and
        // leaving it there would keep that state (and what it owns) alive after the run.
        let stages: Vec<_> = std::mem::take(&mut *lock(&self.shared.stages))
            .iter()
            .map(|(s, _)| monitor::stage_summary(s))
            .collect();
        let reason = lock(&self.shared.abort_reason).clone();
        let source = &self.source;
        RunSummary {
            status: if reason.is_some() {
                "aborted"
            } else {
                "completed"
            }
            .into(),
            error: reason,
            mode: self.mode,
            shard: options.shard.to_string(),
            items_read: source.read.load(Relaxed),
            other_shards: source.other_shards.load(Relaxed),
            skipped: source.skipped.load(Relaxed),
            items_in: source.emitted.load(Relaxed),
            items_out: written,
            failed: stages.iter().map(|s| s.failed).sum(),
            seconds: started.elapsed().as_secs_f64(),
            stages,
            spilled_chunks: self.spilled.load(Relaxed),
            failures,
        }
    }
}

type Plan<T> = Box<dyn FnOnce(&Run, usize) -> Result<Flow<T>, RunError> + Send>;

/// A source plus stages, ready to run.
pub struct Pipeline<T> {
    plan: Plan<T>,
    stages: Vec<(String, StageOptions)>,
    total: Option<u64>,
}

/// How to run a pipeline.
#[derive(Clone)]
pub struct RunOptions {
    /// The mode; `None` picks streaming, or batch on a machine with exactly one GPU.
    pub mode: Option<Mode>,
    /// CPU cores to share among CPU stages; `None` uses every core.
    pub cpus: Option<f64>,
    /// GPUs to share among GPU stages; `None` counts the machine's NVIDIA devices.
    pub gpus: Option<f64>,
    /// Deliver outputs in input order (held back until earlier items are done or failed).
    pub preserve_order: bool,
    /// The part of the input this process owns.
    pub shard: Shard,
    /// Skip items whose output the sink already has.
    pub skip_completed: bool,
    /// Where failed items are written as JSON lines (replaced atomically at the end of the run).
    pub failures_path: Option<PathBuf>,
    /// Where the summary is written as JSON.
    pub summary_path: Option<PathBuf>,
    /// Where the run's scratch directory goes (batch mode's spill, row files stages hand to
    /// the sink); `None` uses the system's temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// Bytes of items batch mode keeps in memory between stages before spilling.
    pub memory_budget: u64,
    /// How often streaming mode re-sizes balanced stages.
    pub balance_interval: Duration,
    /// How progress is shown while running.
    pub progress: Progress,
    /// Called with each failed item as it fails, for callers that act on failures while the run
    /// goes on (the NATS worker sends them back for redelivery or to a dead-letter subject).
    pub on_failure: Option<FailureHook>,
    /// In streaming runs, the longest a stage waits to fill a batch once it holds an item;
    /// `None` waits for a full batch or the end of the input. Sources that never end (NATS)
    /// need a bound, or a trickle of items would wait forever.
    pub batch_wait: Option<Duration>,
}

/// A callback for failed items; see [`RunOptions::on_failure`].
pub type FailureHook = Arc<dyn Fn(&Failure) + Send + Sync>;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            mode: None,
            cpus: None,
            gpus: None,
            preserve_order: false,
            shard: Shard::ALL,
            skip_completed: false,
            failures_path: None,
            summary_path: None,
            spill_dir: None,
            memory_budget: 1 << 30,
            balance_interval: Duration::from_secs(2),
            progress: Progress::Off,
            on_failure: None,
            batch_wait: None,
        }
    }
}

impl RunOptions {
    /// The options with this mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// NVIDIA GPUs visible on this machine (`/dev/nvidia0`, `/dev/nvidia1`, ...).
pub fn detect_gpus() -> usize {
    std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("nvidia")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

impl<T: Item> Pipeline<T> {
    /// A pipeline over `items`, keyed by their position in the input.
    pub fn from_items<I>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let iter = items.into_iter();
        let total = exact_len(&iter);
        let mut pipeline =
            Self::from_keyed(iter.enumerate().map(|(i, item)| (i.to_string(), item)));
        pipeline.total = total;
        pipeline
    }

    /// A pipeline over `(key, item)` pairs; keys decide shards, skipping and failure reports.
    pub fn from_keyed<I>(items: I) -> Self
    where
        I: IntoIterator<Item = (String, T)>,
        I::IntoIter: Send + 'static,
    {
        let iter = items.into_iter();
        let total = exact_len(&iter);
        let plan: Plan<T> = Box::new(move |run: &Run, capacity: usize| {
            let (source, shard, skip, shared) = (
                run.source.clone(),
                run.shard,
                run.skip.clone(),
                run.shared.clone(),
            );
            let mut seq = 0u64;
            let admitted =
                iter.take_while(move |_| !shared.is_aborted())
                    .filter_map(move |(key, value)| {
                        source.read.fetch_add(1, Relaxed);
                        if !shard.owns(&key) {
                            source.other_shards.fetch_add(1, Relaxed);
                            return None;
                        }
                        if skip.as_ref().is_some_and(|done| done(&key)) {
                            source.skipped.fetch_add(1, Relaxed);
                            return None;
                        }
                        source.emitted.fetch_add(1, Relaxed);
                        seq += 1;
                        Some(Envelope {
                            seq: seq - 1,
                            key: key.into(),
                            value,
                        })
                    });
            Ok(match run.mode {
                Mode::Streaming => {
                    let (tx, rx) = bounded(capacity);
                    run.shared.spawn_named("source".into(), move || {
                        for item in admitted {
                            if tx.send(item).is_err() {
                                break;
                            }
                        }
                    });
                    Flow::Stream(rx)
                }
                Mode::Debug => Flow::Debug(Box::new(admitted)),
                Mode::Batch => {
                    let mut store = run.new_store();
                    for item in admitted {
                        store
                            .push(item)
                            .map_err(|e| RunError::io("spilling the input", e))?;
                    }
                    Flow::Stored(store)
                }
            })
        });
        Pipeline {
            plan,
            stages: Vec::new(),
            total,
        }
    }

    /// Appends a stage; each worker gets its own clone of `stage`, set up before its first batch.
    pub fn stage<S>(self, stage: S) -> Pipeline<S::Out>
    where
        S: Stage<In = T> + Clone,
        S::Out: Item,
    {
        let prototype = Mutex::new(stage);
        self.stage_with(move || lock(&prototype).clone())
    }

    /// Appends a stage whose workers' instances are made by `factory`.
    pub fn stage_with<S, F>(self, factory: F) -> Pipeline<S::Out>
    where
        S: Stage<In = T>,
        S::Out: Item,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let probe = factory();
        let (name, options) = (probe.name(), probe.options());
        drop(probe);
        let make: Factory<S> = Arc::new(factory);
        let prev = self.plan;
        let mut stages = self.stages;
        stages.push((name.clone(), options.clone()));
        let plan: Plan<S::Out> = Box::new(move |run: &Run, out_capacity: usize| {
            let max_workers = run.max_workers(&options);
            let flow = prev(run, options.batch_size.max(1) * max_workers)?;
            let stats = Arc::new(StageStats::new(name, options.clone()));
            Ok(match flow {
                Flow::Stream(input) => run.stream_stage(make, stats, input, out_capacity),
                Flow::Debug(input) => {
                    run.register(stats.clone(), None);
                    Flow::Debug(Box::new(DebugStage::new(
                        input,
                        make,
                        stats,
                        run.shared.clone(),
                    )))
                }
                Flow::Stored(store) => run.batch_stage(make, stats, store, max_workers),
            })
        });
        Pipeline {
            plan,
            stages,
            total: self.total,
        }
    }

    /// Runs the pipeline to the end, writing outputs to `sink`.
    //
    // `start` checks the resources and starts the bookkeeping, the plan starts the stages, their
    // outputs go to the sink (`drive`), and `Started::finish` stops everything and writes the
    // summary.
    pub fn run(self, options: &RunOptions, sink: &mut dyn Sink<T>) -> Result<RunSummary, RunError> {
        let started = self.start(options, sink)?;
        let last_batch = self
            .stages
            .last()
            .map(|(_, o)| o.batch_size.max(1))
            .unwrap_or(64);
        let flow = (self.plan)(&started.run, last_batch);
        let written = drive(flow, &started, sink);
        started.finish(options, sink, written)
    }

    /// Checks the stages against the run's resources, decides the mode, reads which items are
    /// done, and starts the failures writer and the monitor.
    fn start(&self, options: &RunOptions, sink: &mut dyn Sink<T>) -> Result<Started, RunError> {
        let started = Instant::now();
        let (pools, mode) = resources(options);
        self.check_stages(pools.gpus)?;
        let skip = if options.skip_completed {
            Some(sink.completed()?.ok_or(RunError::CannotSkip)?)
        } else {
            None
        };
        let ordered = options.preserve_order && mode != Mode::Debug;
        let (failures_tx, gone_rx, failure_thread) = start_failures(options, ordered)?;
        let scratch = scratch_dir(options)?;
        let shared = Arc::new(Shared {
            failures: Mutex::new(Some(failures_tx)),
            aborted: AtomicBool::new(false),
            abort_reason: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            stages: Mutex::new(Vec::new()),
            next_gpu: AtomicUsize::new(0),
            gpus: pools.gpus,
            batch_wait: options.batch_wait,
            scratch: scratch.path().to_path_buf(),
        });
        let scratch = Arc::new(scratch);
        let spill = (mode == Mode::Batch).then(|| scratch.clone());
        let source = Arc::new(SourceStats {
            total: self.total,
            ..SourceStats::default()
        });
        let run = Run {
            shared,
            mode,
            pools,
            shard: options.shard,
            skip,
            source: source.clone(),
            spill,
            _scratch: scratch,
            memory_budget: options.memory_budget,
            spilled: AtomicUsize::new(0),
        };

        let stop = Arc::new(AtomicBool::new(false));
        let names = self
            .stages
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>();
        let reporter = Arc::new(Mutex::new(Reporter::new(
            options.progress,
            &names,
            source.total,
        )));
        let monitor = run.start_monitor(stop.clone(), reporter.clone(), options.balance_interval);
        Ok(Started {
            started,
            run,
            ordered,
            gone_rx,
            failure_thread,
            stop,
            monitor,
            reporter,
        })
    }

    /// Refuses stages that need more GPUs per worker than the run has, or negative resources.
    fn check_stages(&self, gpus: f64) -> Result<(), RunError> {
        for (name, stage) in &self.stages {
            if stage.uses_gpu() && stage.gpus > gpus {
                return Err(RunError::Resources(format!(
                    "stage {name} needs {} GPU per worker but this run has {gpus} (set the run's gpus, or the \
                     stage's gpus to 0 to run it on CPU)",
                    stage.gpus
                )));
            }
            if stage.cpus < 0.0 || stage.gpus < 0.0 {
                return Err(RunError::Resources(format!(
                    "stage {name}: cpus and gpus cannot be negative"
                )));
            }
        }
        Ok(())
    }
}

/// The CPU and GPU pools the options give (the machine's when unset), and the mode: the
/// options', else batch on a machine with exactly one GPU and streaming elsewhere.
fn resources(options: &RunOptions) -> (Pools, Mode) {
    let gpus = options.gpus.unwrap_or_else(|| detect_gpus() as f64);
    let cpus = options.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64
    });
    let mode = options.mode.unwrap_or(if gpus == 1.0 {
        Mode::Batch
    } else {
        Mode::Streaming
    });
    (Pools { cpus, gpus }, mode)
}

/// Starts the failures writer: returns where workers send failures, where failed items'
/// positions come back when outputs are `ordered`, and the writer's thread.
fn start_failures(
    options: &RunOptions,
    ordered: bool,
) -> Result<(Sender<Failure>, Receiver<u64>, FailureThread), RunError> {
    let (failures_tx, failures_rx) = unbounded::<Failure>();
    let (gone_tx, gone_rx) = unbounded::<u64>();
    let failures_path = options.failures_path.clone();
    let on_failure = options.on_failure.clone();
    let failure_thread = std::thread::Builder::new()
        .name("sluice-failures".into())
        .spawn(move || {
            collect_failures(
                failures_rx,
                failures_path,
                ordered.then_some(gone_tx),
                on_failure,
            )
        })
        .map_err(|e| RunError::io("starting the failures writer", e))?;
    Ok((failures_tx, gone_rx, failure_thread))
}

/// One directory per run: batch mode's spill and the row files stages hand to the sink
/// ([`crate::rows`]); removed when the run is over.
fn scratch_dir(options: &RunOptions) -> Result<tempfile::TempDir, RunError> {
    let base = options.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("sluice-run-")
        .tempdir_in(&base)
        .map_err(|e| {
            RunError::io(
                format!("making the run's scratch directory in {}", base.display()),
                e,
            )
        })
}

/// A run whose bookkeeping is going: what [`drive`] and [`Started::finish`] share.
struct Started {
    started: Instant,
    run: Run,
    /// Outputs are written in input order.
    ordered: bool,
    /// Positions of failed items, for putting outputs in order.
    gone_rx: Receiver<u64>,
    failure_thread: FailureThread,
    stop: Arc<AtomicBool>,
    monitor: std::thread::JoinHandle<()>,
    reporter: Arc<Mutex<Reporter>>,
}

impl Started {
    /// Finishes the sink, stops the monitor, joins every worker and the failures writer, and
    /// writes the summary.
    fn finish<T>(
        self,
        options: &RunOptions,
        sink: &mut dyn Sink<T>,
        written: u64,
    ) -> Result<RunSummary, RunError> {
        let shared = &self.run.shared;
        if let Err(e) = sink.finish() {
            shared.abort(format!("finishing output: {e}"));
        }
        // Stop the monitor before joining so that it cannot start workers we would miss.
        self.stop.store(true, Relaxed);
        self.monitor.thread().unpark();
        let _ = self.monitor.join();
        std::mem::replace(
            &mut *lock(&self.reporter),
            Reporter::new(Progress::Off, &[], None),
        )
        .finish();
        let failures = join_all(shared, self.failure_thread);
        let summary = self.run.summary(options, self.started, written, failures);
        if let Some(path) = &options.summary_path {
            write_summary(path, &summary)?;
        }
        match summary.error.clone() {
            Some(reason) => Err(RunError::Aborted {
                reason,
                summary: Box::new(summary),
            }),
            None => Ok(summary),
        }
    }
}

/// The failures writer's thread: it returns the failures kept for the summary and why writing
/// the failures file failed, if it did.
type FailureThread = std::thread::JoinHandle<(Vec<Failure>, Option<std::io::Error>)>;

/// Closes the failures channel, joins every worker and source thread (including any started
/// while joining) and then the failures writer; returns the failures kept for the summary.
fn join_all(shared: &Shared, failure_thread: FailureThread) -> Vec<Failure> {
    shared.close_failures();
    loop {
        let handles = std::mem::take(&mut *lock(&shared.threads));
        if handles.is_empty() {
            break;
        }
        for handle in handles {
            let _ = handle.join();
        }
    }
    let (failures, failures_error) = failure_thread.join().unwrap_or_else(|_| (Vec::new(), None));
    if let Some(e) = failures_error {
        shared.abort(format!("writing failures: {e}"));
    }
    failures
}

/// Writes the summary as JSON to `path` (replaced atomically).
fn write_summary(path: &std::path::Path, summary: &RunSummary) -> Result<(), RunError> {
    sluice_core::storage::write_output(path, |out| {
        serde_json::to_writer_pretty(&mut *out, summary)?;
        out.write_all(b"\n")
    })
    .map_err(|e| RunError::io(format!("writing the summary to {}", path.display()), e))
}

/// Writes the last stage's outputs to the sink as they come (in input order when asked),
/// stopping at the first sink error; returns how many were written.
fn drive<T: Item>(
    flow: Result<Flow<T>, RunError>,
    started: &Started,
    sink: &mut dyn Sink<T>,
) -> u64 {
    let (shared, ordered, gone_rx) = (&started.run.shared, started.ordered, &started.gone_rx);
    let mut written = 0u64;
    // `None` gives the sink a tick: no output came for a while.
    let mut emit = |item: Option<Envelope<T>>| {
        let result = match item {
            Some(item) => sink.write(item).map(|()| written += 1),
            None => sink.tick(),
        };
        result
            .map_err(|e| shared.abort(format!("writing output: {e}")))
            .is_ok()
    };
    match flow {
        Err(e) => shared.abort(e.to_string()),
        Ok(Flow::Stream(rx)) if ordered => drive_ordered(rx, gone_rx, shared, &mut emit),
        Ok(Flow::Stream(rx)) => loop {
            // Sinks that hold outputs (the NATS worker's) flush on time even when none come.
            let ok = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(item) => emit(Some(item)),
                Err(RecvTimeoutError::Timeout) => emit(None),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if !ok {
                break;
            }
        },
        Ok(Flow::Debug(items)) => {
            for item in items {
                if !emit(Some(item)) {
                    break;
                }
            }
        }
        Ok(Flow::Stored(store)) => {
            started
                .run
                .spilled
                .fetch_add(store.spilled_chunks(), Relaxed);
            drive_stored(store, ordered, gone_rx, shared, &mut emit);
        }
    }
    written
}

/// Where [`drive`]'s helpers send outputs: `Some` an output, `None` a tick; false once the sink
/// failed.
type Emit<'a, T> = dyn FnMut(Option<Envelope<T>>) -> bool + 'a;

/// Streaming outputs in input order: each waits until every earlier item came out or failed.
fn drive_ordered<T>(
    rx: Receiver<Envelope<T>>,
    gone_rx: &Receiver<u64>,
    shared: &Shared,
    emit: &mut Emit<'_, T>,
) {
    let mut write = |item: Envelope<T>| emit(Some(item));
    let mut order = Reorder::default();
    let mut outputs_open = true;
    let never = crossbeam_channel::never();
    loop {
        let outputs = if outputs_open { &rx } else { &never };
        crossbeam_channel::select! {
            recv(outputs) -> item => match item {
                Ok(item) => if !order.item(item, &mut write) { break },
                Err(_) => { outputs_open = false; shared.close_failures(); }
            },
            recv(gone_rx) -> seq => match seq {
                Ok(seq) => if !order.gone(seq, &mut write) { break },
                Err(_) => if !outputs_open { break },
            },
        }
    }
    drop(rx);
    order.flush(&mut write);
}

/// Batch mode's stored outputs; in input order when `ordered`, which waits for every failure
/// first (the stages are done by now, so they are all known).
fn drive_stored<T: Item>(
    store: Store<T>,
    ordered: bool,
    gone_rx: &Receiver<u64>,
    shared: &Shared,
    emit: &mut Emit<'_, T>,
) {
    let mut write = |item: Envelope<T>| emit(Some(item));
    let mut order = Reorder::default();
    if ordered {
        shared.close_failures();
        for seq in gone_rx.iter() {
            order.gone(seq, &mut |_| true);
        }
    }
    for item in store.drain() {
        let ok = match item {
            Ok(item) if ordered => order.item(item, &mut write),
            Ok(item) => write(item),
            Err(e) => {
                shared.abort(format!("reading spilled items back: {e}"));
                false
            }
        };
        if !ok {
            break;
        }
    }
    order.flush(&mut write);
}

fn exact_len<I: Iterator>(iter: &I) -> Option<u64> {
    match iter.size_hint() {
        (low, Some(high)) if low == high => Some(low as u64),
        _ => None,
    }
}

/// Failures to the failures file (replaced atomically at the end) and, when outputs are kept in
/// order, their positions to the collector. Returns the first failures, for the summary.
fn collect_failures(
    failures: Receiver<Failure>,
    path: Option<PathBuf>,
    gone: Option<crossbeam_channel::Sender<u64>>,
    hook: Option<FailureHook>,
) -> (Vec<Failure>, Option<std::io::Error>) {
    const KEEP: usize = 100;
    let mut first = Vec::new();
    let mut lines = Vec::new();
    for failure in failures {
        if let Some(hook) = &hook {
            hook(&failure);
        }
        if let Some(gone) = &gone {
            let _ = gone.send(failure.seq);
        }
        if path.is_some() {
            if let Err(e) = serde_json::to_writer(&mut lines, &failure) {
                return (first, Some(e.into()));
            }
            lines.push(b'\n');
        }
        if first.len() < KEEP {
            first.push(failure);
        }
    }
    drop(gone);
    let error = path
        .and_then(|p| sluice_core::storage::write_output(&p, |out| out.write_all(&lines)).err());
    (first, error)
}

/// Restores input order: holds outputs until every earlier item has arrived or failed.
struct Reorder<T> {
    next: u64,
    held: BTreeMap<u64, Envelope<T>>,
    gone: BTreeSet<u64>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            next: 0,
            held: BTreeMap::new(),
            gone: BTreeSet::new(),
        }
    }
}

impl<T> Reorder<T> {
    fn item(&mut self, item: Envelope<T>, out: &mut dyn FnMut(Envelope<T>) -> bool) -> bool {
        self.held.insert(item.seq, item);
        self.advance(out)
    }

    fn gone(&mut self, seq: u64, out: &mut dyn FnMut(Envelope<T>) -> bool) -> bool {
        self.gone.insert(seq);
        self.advance(out)
    }

    fn advance(&mut self, out: &mut dyn FnMut(Envelope<T>) -> bool) -> bool {
        loop {
            if let Some(item) = self.held.remove(&self.next) {
                self.next += 1;
                if !out(item) {
                    return false;
                }
            } else if self.gone.remove(&self.next) {
                self.next += 1;
            } else {
                return true;
            }
        }
    }

    /// Writes whatever is still held, in order (gaps remain only when a run was aborted).
    fn flush(&mut self, out: &mut dyn FnMut(Envelope<T>) -> bool) {
        for (_, item) in std::mem::take(&mut self.held) {
            if !out(item) {
                return;
            }
        }
    }
}
