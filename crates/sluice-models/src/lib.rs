//! Models served and run by Sluice.
//!
//! A model is written once here and used in-process by pipeline stages, behind the HTTP server and
//! by the CLI. Today: M2M100 translation in candle ([`m2m100`]), loaded from a directory in the
//! Hugging Face layout or a hub id ([`source`]) with memory-mapped weights ([`weights`]),
//! and int8 linear layers with CPU-dispatched kernels ([`int8`]).

pub mod classifier;
pub mod device;
pub mod error;
pub mod gemv;
pub mod int8;
pub mod m2m100;
pub mod pool;
pub mod rowops;
pub mod source;
pub mod weights;

pub use error::{ModelError, Result};
pub use m2m100::{GenerationOptions, M2M100};
pub use source::ModelSource;
