//! Models served and run by Sluice.
//!
//! A model is written once here and used in-process by pipeline stages, behind the HTTP server and
//! by the CLI, all through [`service`]: one load function (a source, a device and a compute type
//! in, the model's service out) and one interface every kind implements. Today: M2M100
//! translation in candle ([`m2m100`]), loaded from a directory in the Hugging Face layout or a hub
//! id ([`source`]) with memory-mapped weights ([`weights`]) and int8 linear layers with
//! CPU-dispatched kernels ([`int8`]); and ONNX audio classifiers run with tract ([`classifier`]).

pub mod classifier;
pub mod device;
pub mod error;
pub mod gemv;
pub mod int8;
pub mod m2m100;
pub mod objects;
pub mod pool;
pub mod rowops;
pub mod service;
pub mod source;
pub mod weights;

pub use device::DeviceSpec;
pub use error::{ModelError, Result};
pub use m2m100::{GenerationOptions, M2M100};
pub use source::ModelSource;
