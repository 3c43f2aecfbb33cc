//! Built-in stages and sources for config-driven pipelines, whose items are JSON objects.

pub mod exec;
pub mod source;

pub use exec::ExecStage;
pub use source::{read_source, SourceItems, SourceSpec, UnreadableRecord};

/// The item type of config-driven pipelines.
pub type Record = serde_json::Value;
