//! sluice-cli's integration tests, one binary (one link,
//! one file on disk) instead of one per file.
mod audio;
mod classify;
mod deploy;
mod docs;
mod outage;
mod postgres;
mod python;
mod run;
mod schemathesis;
mod serve;
mod soak;
mod tls;
mod translate;
mod triton;
mod worker;
