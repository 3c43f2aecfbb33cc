//! The Sluice model server: `POST /translation` over M2M100 with dynamic batching across requests,
//! admission control, health, metrics and graceful shutdown.

pub mod api;
pub mod batcher;
pub mod classify;
pub mod error;
pub mod infer;
pub mod metrics;
pub mod server;
pub mod translation;

pub use server::{serve, AccessConfig, ModelEntry, ModelKind, OpenRoutes, ServeConfig};
