//! sluice-core's integration tests, one binary (one link,
//! one file on disk) instead of one per file.
mod confine;
mod storage;
