//! sluice-stages's integration tests, one binary (one link,
//! one file on disk) instead of one per file.
mod audio_config;
mod audio_job;
mod model;
mod translate;
