//! Sluice's stages that need more than the pipeline engine: `translate` (M2M100 in-process),
//! `model` (a served model in-process, or a remote Sluice server) and the audio stages and
//! pipelines ([`audio`]). They sit above the engine, the models and the audio codecs, so the
//! engine knows stages, executors, sources and sinks but no model or codec: a pipeline gets these
//! kinds through [`kinds`], as any crate adds its own.
//!
//! ```no_run
//! use sluice_pipeline::config::{PipelineConfig, RawConfig};
//!
//! let raw = RawConfig::load("translate.toml".as_ref(), &[]).unwrap();
//! let pipeline = PipelineConfig::from_raw_with(raw, &sluice_stages::kinds()).unwrap();
//! pipeline.run().unwrap();
//! ```

pub mod audio;
pub mod model;
pub mod translate;

use sluice_pipeline::config::StageKinds;

pub use model::{InputAs, ModelSpec, ModelStage};
pub use translate::{load_m2m100, TranslateStage};

/// The stage kinds this crate adds to config pipelines: `translate` and `model`.
pub fn kinds() -> StageKinds {
    StageKinds::default()
        .with("translate", translate::build)
        .with("model", model::build)
}
