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
mod error;
mod item;
mod keys;
mod mode;
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
mod sync;
mod workers;

pub use balance::{allocate, Demand};
pub use error::{RunError, SinkError};
pub use item::{Envelope, Key};
pub use mode::{Mode, UnknownMode};
pub use monitor::{describe_metrics, Failure, Progress, RunSummary, StageSummary, METRICS};
pub use pipeline::{detect_gpus, FailureHook, Pipeline, RunOptions};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSink, PostgresSpec};
pub use shard::{BadShard, Shard};
pub use sink::{Completed, FileSink, PartFormat, PartSink, Sink, VecSink};
pub use stage::{
    map, ItemError, MapStage, Stage, StageError, StageOptions, WorkerContext, Workers,
};
pub(crate) use sync::lock;
