//! sluice-models's integration tests, one binary (one link,
//! one file on disk) instead of one per file.
mod failure_policy;
mod hub;
mod load_errors;
mod m2m100_parity;
mod nllb_parity;
mod objects;
mod parity;
