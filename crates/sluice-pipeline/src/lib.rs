//! Sluice's pipeline engine: linear pipelines of typed stages run in streaming, batch or debug
//! mode, with workers balanced by measured speed, failures isolated per item, and sinks that make
//! reruns skip finished work.
//!
//! ```
//! use sluice_pipeline::{map, ItemError, Pipeline, RunOptions, StageOptions, VecSink};
//!
//! let double = map("double", StageOptions::default(), |x: &u64| Ok::<_, ItemError>(x * 2));
//! let mut out = VecSink::default();
//! let summary = Pipeline::from_items(0..100u64).stage(double).run(&RunOptions::default(), &mut out).unwrap();
//! assert_eq!(summary.items_out, 100);
//! ```

mod balance;
pub mod config;
pub mod connector;
mod keys;
mod monitor;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "parquet")]
mod parquet;
mod pipeline;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod rows;
mod section;
mod shard;
pub mod sink;
mod stage;
pub mod stages;
mod store;
mod workers;

use std::sync::Arc;

pub use balance::{allocate, Demand};
pub use monitor::{describe_metrics, Failure, Progress, RunSummary, StageSummary, METRICS};
pub use pipeline::{detect_gpus, FailureHook, Pipeline, RunOptions};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSink, PostgresSpec};
pub use shard::Shard;
pub use sink::{Completed, FileSink, PartFormat, PartSink, Sink, VecSink};
pub use stage::{
    map, ItemError, MapStage, Stage, StageError, StageOptions, WorkerContext, Workers,
};

/// Locks a mutex, going on after a panic elsewhere: every guarded value here stays consistent
/// between statements, and a panicking stage is already reported by the engine.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An item's key: names it in failures, decides its shard and whether it is already done.
pub type Key = Arc<str>;

/// An item on its way through a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// Position among the items this run processes, used to restore order when asked.
    pub seq: u64,
    /// The item's key.
    pub key: Key,
    /// The item.
    pub value: T,
}

/// How stages are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// All stages at once, connected by bounded channels: bounded memory, overlapping stages.
    Streaming,
    /// One stage at a time over every item, spilling to disk past a memory budget: each stage
    /// gets the whole machine (one GPU switches between models once, not per batch).
    Batch,
    /// Plain loops on the calling thread, one worker per stage, so breakpoints work.
    Debug,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Streaming => "streaming",
            Mode::Batch => "batch",
            Mode::Debug => "debug",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "streaming" => Ok(Mode::Streaming),
            "batch" => Ok(Mode::Batch),
            "debug" => Ok(Mode::Debug),
            other => Err(format!(
                "unknown mode {other:?}: expected streaming, batch or debug"
            )),
        }
    }
}

/// A sink could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An item could not be encoded, or an existing output could not be read back.
    #[error("{0}")]
    Encode(String),
}

impl SinkError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SinkError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A run that could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The options or the pipeline do not fit this machine.
    #[error("{0}")]
    Invalid(String),
    /// The run stopped early; the summary says what was done.
    #[error("run aborted: {reason}")]
    Aborted {
        /// Why.
        reason: String,
        /// What was done before it stopped.
        summary: Box<RunSummary>,
    },
    /// The sink failed when the run started.
    #[error(transparent)]
    Sink(#[from] SinkError),
}
