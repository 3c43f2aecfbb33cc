//! Sluice's stages that need more than the pipeline engine: `translate` (M2M100 in-process),
//! `model` (a served model in-process, or a remote Sluice server) and the audio stages and
//! pipelines ([`audio`]). They sit above the engine, the models and the audio codecs, so the
//! engine knows stages, executors, sources and sinks but no model or codec: a pipeline gets these
//! kinds through [`registry`], as any crate adds its own, and [`load`] picks the family of
//! pipeline (records or audio) a file's source makes.
//!
//! ```no_run
//! use sluice_pipeline::config::{PipelineConfig, RawConfig};
//!
//! let raw = RawConfig::load("translate.toml".as_ref(), &[]).unwrap();
//! let pipeline = PipelineConfig::from_raw_with(raw, &sluice_stages::registry()).unwrap();
//! pipeline.run().unwrap();
//! ```

pub mod audio;
pub mod model;
pub mod translate;

use sluice_pipeline::config::{ConfigError, PipelineConfig, RawConfig, Registry};

pub use model::{InputAs, ModelSpec, ModelStage};
pub use translate::{load_m2m100, TranslateStage};

/// The engine's kinds and the stage kinds this crate adds to record pipelines: `translate` and
/// `model`.
pub fn registry() -> Registry {
    Registry::default()
        .stage("translate", translate::build)
        .stage("model", model::build)
        .elsewhere(audio::config::SOURCE_KIND)
}

/// A pipeline file built into the family its source makes.
pub enum AnyPipeline {
    /// JSON records from a `lines`, `jsonl`, `files` or `nats` source.
    Records(PipelineConfig),
    /// Audio files from a `match_files` source.
    Audio(audio::config::AudioPipeline),
}

impl AnyPipeline {
    /// The run options the file sets (command-line flags may change them before running).
    pub fn options_mut(&mut self) -> &mut sluice_pipeline::RunOptions {
        match self {
            AnyPipeline::Records(p) => &mut p.options,
            AnyPipeline::Audio(p) => &mut p.options,
        }
    }
}

/// Builds a pipeline file read by [`RawConfig`]: an audio pipeline when its source is
/// `match_files`, else a record pipeline with [`registry`]'s kinds.
pub fn load(raw: RawConfig) -> Result<AnyPipeline, ConfigError> {
    if raw.source_kind() == Some(audio::config::SOURCE_KIND) {
        return audio::config::AudioPipeline::from_raw(raw).map(AnyPipeline::Audio);
    }
    PipelineConfig::from_raw_with(raw, &registry()).map(AnyPipeline::Records)
}
