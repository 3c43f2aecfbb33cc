//! Sources and sinks as the engine sees them: what a `[source]` or `[sink]` section was built
//! into, asked for its capabilities instead of matched on its kind (as Vector's `SourceConfig` and
//! `SinkConfig`). A source is read once by `sluice run`, or, for a broker's source, pulled from
//! by `sluice worker` until stopped; a sink says how it is opened, which keys it already holds,
//! where its outputs live and when a write is durable (a worker acknowledges its inputs then).
//!
//! Every kind implements these traits in its own module and registers its builder in a
//! [`crate::config::Registry`]; nothing here knows a kind.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::stages::{Record, SourceItems};
use crate::{Completed, Pipeline, RunError, RunOptions, RunSummary, Sink, SinkError};

/// A `[source]` as its builder made it.
pub trait SourceConfig: Send + Sync {
    /// The record field that keys each item, when the source names one.
    fn key_field(&self) -> Option<&str> {
        None
    }

    /// Opens the items of a run that reads the source once (`sluice run`).
    fn open(&self) -> Result<SourceItems, RunError>;

    /// How `sluice worker` pulls from it, for a broker's source.
    fn broker(&self) -> Option<&dyn BrokerSource> {
        None
    }
}

/// A source that workers pull from until stopped, acknowledging each item once its output is
/// durable (a JetStream consumer, a Kafka consumer group, a Pub/Sub subscription).
pub trait BrokerSource: Send + Sync {
    /// Runs one worker on `job` until it is stopped (or drained, when asked).
    fn run_worker(&self, job: WorkerJob) -> Result<(RunSummary, WorkerCounts), RunError>;
}

/// Builds the worker's pipeline on the items it pulls.
pub type BuildPipeline =
    Box<dyn FnOnce(Box<dyn Iterator<Item = (String, Record)> + Send>) -> Pipeline<Record>>;

/// What a broker's worker runs: the pipeline, its sink and the run's options.
pub struct WorkerJob {
    /// Where the outputs go.
    pub sink: Arc<dyn SinkConfig>,
    /// The record field keying each output.
    pub key_field: String,
    /// The pipeline over the pulled items.
    pub build: BuildPipeline,
    /// The run options of the pipeline file.
    pub options: RunOptions,
    /// How the worker runs.
    pub worker: WorkerOptions,
}

/// A `[sink]` as its builder made it.
pub trait SinkConfig: Send + Sync {
    /// The record field that keys each output, when the sink names one.
    fn key_field(&self) -> Option<&str> {
        None
    }

    /// Where the outputs go, for messages (never with a password).
    fn describe(&self) -> String;

    /// The local directory the outputs go to: where the failures file and the summary go
    /// unless `[run]` says.
    fn local_dir(&self) -> Option<&Path> {
        None
    }

    /// Why a rerun cannot skip what this sink holds, when it cannot tell which keys are done.
    fn cannot_skip(&self) -> Option<&'static str> {
        None
    }

    /// A writer; `tag` makes its part names unique among the writers of one output.
    fn open(&self, key_field: &str, tag: &str) -> Result<Box<dyn Sink<Record>>, SinkError>;

    /// A writer for a worker of a broker, given the broker's connection (a sink on the same
    /// broker may share it).
    fn open_for_worker(
        &self,
        key_field: &str,
        tag: &str,
        _broker: &dyn Any,
    ) -> Result<Box<dyn Sink<Record>>, SinkError> {
        self.open(key_field, tag)
    }

    /// Outputs written between durable flushes: a worker acknowledges its inputs at each flush.
    fn flush_items(&self) -> usize;

    /// Reads which keys the outputs hold, apart from the writer: a worker checks redelivered
    /// items against it.
    fn done_check(&self, _key_field: &str) -> Result<Option<DoneCheck>, SinkError> {
        Ok(None)
    }
}

/// Reads which keys the outputs hold now, for redelivered items.
pub type DoneCheck = Box<dyn Fn() -> Result<Option<Completed>, SinkError> + Send + Sync>;

/// How a worker runs.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Stop once the source has nothing pending and nothing awaiting an ack (for Jobs, tests).
    pub exit_when_drained: bool,
    /// Set to stop pulling; the worker then finishes what it holds, acks, and returns.
    pub stop: Arc<AtomicBool>,
}

/// What a worker did with the messages it received.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Messages received.
    pub received: u64,
    /// Of those, messages delivered before (to this worker or another).
    pub redelivered: u64,
    /// Messages acked after their output was written.
    pub acked: u64,
    /// Redelivered items whose output already existed: acked without redoing them.
    pub already_done: u64,
    /// Failed items handed back for another try.
    pub retried: u64,
    /// Items sent to the dead-letter destination.
    pub dead_lettered: u64,
    /// Items not written because the connection was lost while they were processed (their
    /// messages come back).
    pub abandoned: u64,
}

/// A name part no other worker's outputs carry: workers share output directories, across
/// machines too.
pub fn worker_tag() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!("{host}-{}-", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Stops `flag`'s worker on SIGTERM or Ctrl-C (what Kubernetes sends before killing a pod).
pub fn stop_on_signals(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            rt.block_on(async {
                sluice_core::signal::terminated().await;
                tracing::info!("stopping: finishing the items held, then acknowledging them");
                flag.store(true, Ordering::Relaxed);
            })
        })?;
    Ok(())
}
