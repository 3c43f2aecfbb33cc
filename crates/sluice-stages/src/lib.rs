//! Sluice's stages that need more than the pipeline engine: `translate` (a translation model
//! in-process), `model` (any model kind in-process through the model service, or a remote
//! Sluice server) and the audio stages and
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

use sluice_models::m2m100::ComputeType;
use sluice_pipeline::config::{ConfigError, PipelineConfig, RawConfig, Registry};

pub use model::{InputAs, ModelSpec, ModelStage};
pub use translate::{load_model, TranslateStage};

/// What the command line sets for every model-backed stage whose section does not say.
#[derive(Debug, Clone, Default)]
pub struct ModelDefaults {
    /// How translation models compute (`--compute-type`).
    pub compute_type: ComputeType,
}

/// The engine's kinds and the stage kinds this crate adds to record pipelines (`translate` and
/// `model`), with the default settings.
pub fn registry() -> Registry {
    registry_with(ModelDefaults::default())
}

/// As [`registry`], with the command line's defaults for model-backed stages.
pub fn registry_with(defaults: ModelDefaults) -> Registry {
    let (translate, model) = (defaults.clone(), defaults);
    Registry::default()
        .stage("translate", translate::doc(), move |s| {
            translate::build(s, &translate)
        })
        .stage("model", model::doc(), move |s| model::build(s, &model))
        .elsewhere(audio::config::SOURCE_KIND)
}

/// A pipeline file built into the family its source makes.
// One is built per command; the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
/// `match_files`, else a record pipeline with [`registry_with`]'s kinds.
pub fn load(raw: RawConfig, defaults: ModelDefaults) -> Result<AnyPipeline, ConfigError> {
    if raw.source_kind() == Some(audio::config::SOURCE_KIND) {
        return audio::config::AudioPipeline::from_raw(raw).map(AnyPipeline::Audio);
    }
    PipelineConfig::from_raw_with(raw, &registry_with(defaults)).map(AnyPipeline::Records)
}
