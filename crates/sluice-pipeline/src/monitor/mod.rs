//! Live counters of a run, the periodic tick that balances workers and reports progress, and the
//! final summary built from the same counters.

mod counters;
mod progress;
mod rebalance;
mod summary;

pub(crate) use counters::{SourceStats, StageStats};
pub use progress::Progress;
pub(crate) use progress::{every, Reporter};
pub(crate) use rebalance::{rebalance, LiveStage, Pools, Resize};
pub(crate) use summary::stage_summary;
pub use summary::{describe_metrics, Failure, RunSummary, StageSummary, METRICS};
