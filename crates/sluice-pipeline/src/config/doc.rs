//! What each kind says about itself for the generated reference (`docs/reference/pipeline.md`):
//! a one-line summary, and the keys its section takes, read from the very type its builder
//! deserializes, so the reference cannot list a key the code does not take or miss one it does.
//!
//! The keys come from [`keys_of`] (`fields.rs`).

use std::sync::Arc;

use serde::Deserialize;

pub use super::fields::keys_of;
use super::raw::RawSection;
use crate::connector::{SinkConfig, SourceConfig};
use crate::section::ConfigError;

/// Builds a `[source]` of one kind from its table (without `kind`).
pub type SourceBuilder = fn(&RawSection) -> Result<Arc<dyn SourceConfig>, ConfigError>;

/// Builds a `[sink]` of one kind from its table (without `kind`).
pub type SinkBuilder = fn(&RawSection) -> Result<Arc<dyn SinkConfig>, ConfigError>;

/// A kind's summary and the keys of its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindDoc {
    /// What the kind does, in one line.
    pub summary: &'static str,
    /// The keys its section takes (besides `kind`), in declaration order.
    pub keys: Vec<&'static str>,
}

impl KindDoc {
    /// `summary`, with the keys of the section type `T`.
    pub fn of<T: for<'de> Deserialize<'de>>(summary: &'static str) -> Self {
        Self {
            summary,
            keys: keys_of::<T>(),
        }
    }

    /// `summary`, for a kind whose section takes no key of its own.
    pub fn bare(summary: &'static str) -> Self {
        Self {
            summary,
            keys: Vec::new(),
        }
    }
}

/// A kind's builder with what it says about itself.
#[derive(Clone)]
pub struct Kind<B> {
    /// The summary and keys.
    pub doc: KindDoc,
    /// Builds the kind from its section.
    pub build: B,
}

impl<B> Kind<B> {
    /// `build`, documented by `doc`.
    pub fn new(doc: KindDoc, build: B) -> Self {
        Self { doc, build }
    }
}
