//! sluice-serve's integration tests, one binary (one link, one file on disk) instead of one per
//! file; tests that read process-wide metrics (batching.rs, disconnect.rs) keep a binary each.
mod access;
mod admission;
mod common;
mod contract;
mod errors;
mod health;
mod infer;
mod nllb;
mod shutdown;
mod v2;
