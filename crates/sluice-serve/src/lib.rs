//! The Sluice model server: `POST /translation`, `/v1/models` and the Open Inference Protocol's
//! `/v2` over the models' services, with dynamic batching across requests, admission control,
//! access control, health, metrics and graceful shutdown.

pub mod api;
pub mod batcher;
pub mod error;
pub mod infer;
mod limits;
pub mod metrics;
pub mod server;

pub use limits::Limits;
pub use server::{
    serve, AccessConfig, ModelEntry, ModelEntryError, OpenRoutes, ServeConfig, UnknownRouteGroup,
};
