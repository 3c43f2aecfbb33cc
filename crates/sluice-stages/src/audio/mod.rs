//! Audio on the pipeline engine: stages over storage locations (local disk or object storage)
//! built on `sluice-audio`'s codecs ([`stages`]), output naming ([`paths`]), `sluice audio
//! resample` ([`job`]) and audio pipeline files ([`config`]).

pub mod config;
pub mod convert;
pub mod job;
pub mod paths;
pub mod stages;
