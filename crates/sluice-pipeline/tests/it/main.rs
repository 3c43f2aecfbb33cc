//! sluice-pipeline's integration tests, one binary (one link, one file on disk)
//! instead of one per file; memory.rs measures its process and keeps a binary of its own.
mod backpressure;
mod balancing;
mod common;
mod failures;
mod modes;
mod parquet;
mod rows;
mod sharding;
