//! The typed stage API: what a library user implements to put a model or a transform in a
//! pipeline, and the per-stage settings (resources, batch size, workers, retries) the executors obey.

use std::time::Duration;

/// A step of a pipeline: set up once per worker, then called on batches of items.
///
/// Each worker owns its own instance (made by cloning the value given to
/// [`Pipeline::stage`](crate::Pipeline::stage) or by a factory), so `process` takes `&mut self`
/// and needs no locks. `process` borrows its inputs so that the engine can retry items whose
/// error was transient without the stage having to hand them back.
pub trait Stage: Send + 'static {
    /// The items this stage consumes: the previous stage's `Out`.
    type In: Send + 'static;
    /// The items this stage produces, one per input item.
    type Out: Send + 'static;

    /// Name used in logs, metrics, failure records and the summary.
    fn name(&self) -> String;

    /// Resources, batch size, worker count and retry policy; defaults suit a CPU stage.
    fn options(&self) -> StageOptions {
        StageOptions::default()
    }

    /// Called once per worker before its first batch: load a model, start a process, open a client.
    fn setup(&mut self, _worker: &WorkerContext) -> Result<(), StageError> {
        Ok(())
    }

    /// Processes one batch: one result per input item, in the same order.
    ///
    /// An `Err` for an item sends that item to the failures output (after retries when the error
    /// is transient). An `Err` for the whole call means this worker is broken: its instance is
    /// dropped, a new one is set up, and the batch's items are reported as failed.
    fn process(
        &mut self,
        batch: &[Self::In],
    ) -> Result<Vec<Result<Self::Out, ItemError>>, StageError>;
}

/// What a worker knows about itself when it is set up.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The stage's name.
    pub stage: String,
    /// This worker's number within its stage, counting from 0 and never reused in a run.
    pub worker: usize,
    /// The GPU this worker should use, for stages that declare GPUs.
    pub gpu: Option<usize>,
    /// The run's scratch directory, for [`RowsWriter`](crate::rows::RowsWriter) files handed
    /// to the sink; removed when the run is over.
    pub scratch: std::path::PathBuf,
}

/// How many workers a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workers {
    /// Sized by the balancer from measured per-worker speed, within the stage's pool.
    Auto,
    /// Exactly this many workers on this machine.
    Fixed(usize),
    /// This many workers on each node; one machine is one node, a Kubernetes shard is one node.
    PerNode(usize),
}

impl Workers {
    /// The fixed count on this machine, or `None` when the balancer decides.
    pub fn fixed(self) -> Option<usize> {
        match self {
            Workers::Auto => None,
            Workers::Fixed(n) | Workers::PerNode(n) => Some(n.max(1)),
        }
    }
}

/// Per-stage settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOptions {
    /// Items per `process` call; the last batch of a run may be smaller.
    pub batch_size: usize,
    /// CPU cores each worker occupies (a fraction lets several workers share a core).
    pub cpus: f64,
    /// GPUs each worker occupies; a stage with `gpus > 0` draws from the GPU pool.
    pub gpus: f64,
    /// Fixed or balanced worker count.
    pub workers: Workers,
    /// Attempts after the first for items that failed with a transient error.
    pub max_retries: u32,
    /// Wait before the first retry; doubled at each further attempt.
    pub retry_backoff: Duration,
    /// Workers of this stage that may be replaced after a panic or a broken-worker error before
    /// the run is aborted.
    pub max_restarts: u32,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            batch_size: 16,
            cpus: 1.0,
            gpus: 0.0,
            workers: Workers::Auto,
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            max_restarts: 8,
        }
    }
}

impl StageOptions {
    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets the CPUs and GPUs each worker occupies.
    pub fn resources(mut self, cpus: f64, gpus: f64) -> Self {
        self.cpus = cpus;
        self.gpus = gpus;
        self
    }

    /// Sets a fixed worker count, or `Workers::Auto`.
    pub fn workers(mut self, workers: Workers) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the retry policy for transient item errors.
    pub fn retries(mut self, max_retries: u32, backoff: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_backoff = backoff;
        self
    }

    /// Sets how many broken workers may be replaced before the run is aborted.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// True when this stage's workers draw from the GPU pool.
    pub fn uses_gpu(&self) -> bool {
        self.gpus > 0.0
    }
}

/// Why one item failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ItemError {
    /// What went wrong, for the failures output.
    pub message: String,
    /// Whether trying again later may succeed (a timeout, a 503), so the engine retries it.
    pub transient: bool,
}

impl ItemError {
    /// An error that retrying will not fix (bad input).
    pub fn permanent(message: impl Into<String>) -> Self {
        ItemError {
            message: message.into(),
            transient: false,
        }
    }

    /// An error worth retrying with backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        ItemError {
            message: message.into(),
            transient: true,
        }
    }
}

/// A worker that cannot go on. What the engine does next depends on whether another worker
/// could do better.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StageError {
    /// This worker broke (its subprocess died, a device or I/O error): the engine replaces it, up
    /// to the stage's `max_restarts`.
    #[error("{0}")]
    Broken(String),
    /// Every worker would fail the same way (a model or program that does not exist, a bad
    /// setting, no network to fetch from): restarting cannot help, so the run stops at once with
    /// this error.
    #[error("{0}")]
    Fatal(String),
}

impl StageError {
    /// A broken worker, worth replacing.
    pub fn new(message: impl Into<String>) -> Self {
        StageError::Broken(message.into())
    }

    /// A failure no other worker can avoid: the run stops.
    pub fn fatal(message: impl Into<String>) -> Self {
        StageError::Fatal(message.into())
    }

    /// Whether restarting the worker cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StageError::Fatal(_))
    }

    /// The same error with `context` before its message (`context: message`), fatal or not.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        match self {
            StageError::Broken(m) => StageError::Broken(format!("{context}: {m}")),
            StageError::Fatal(m) => StageError::Fatal(format!("{context}: {m}")),
        }
    }
}

/// A stage made from a closure over single items, for simple transforms and tests.
pub struct MapStage<I, O, F> {
    name: String,
    options: StageOptions,
    f: F,
    _types: std::marker::PhantomData<fn(I) -> O>,
}

impl<I, O, F: Clone> Clone for MapStage<I, O, F> {
    fn clone(&self) -> Self {
        MapStage {
            name: self.name.clone(),
            options: self.options.clone(),
            f: self.f.clone(),
            _types: std::marker::PhantomData,
        }
    }
}

/// Makes a stage that applies `f` to each item.
pub fn map<I, O, F>(name: &str, options: StageOptions, f: F) -> MapStage<I, O, F>
where
    F: FnMut(&I) -> Result<O, ItemError> + Clone + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    MapStage {
        name: name.to_string(),
        options,
        f,
        _types: std::marker::PhantomData,
    }
}

impl<I, O, F> Stage for MapStage<I, O, F>
where
    F: FnMut(&I) -> Result<O, ItemError> + Clone + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    type In = I;
    type Out = O;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn process(&mut self, batch: &[I]) -> Result<Vec<Result<O, ItemError>>, StageError> {
        Ok(batch.iter().map(&mut self.f).collect())
    }
}
