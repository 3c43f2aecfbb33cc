//! `translate`: a translation model in-process, translating one text field of each record into
//! another field. Each worker loads the model once (local directory or Hugging Face cache)
//! through the model service, which checks the languages and settings at setup as the server
//! checks a request's.
//!
//! ```toml
//! [[stage]]
//! kind = "translate"
//! model = "facebook/m2m100_418M"   # a directory or hub id (the default)
//! from = "en"
//! to = "ja"
//! field = "text"                    # the record field holding the text (default)
//! output = "translation"            # the field the translation is written to (default)
//! beams = 5                         # optional: the model's generation config otherwise
//! max_new_tokens = 200              # optional
//! compute_type = "int8"             # int8 | float32 | auto (the command's --compute-type otherwise)
//! ```

use std::sync::Arc;

use serde::Deserialize;
use sluice_models::m2m100::ComputeType;
use sluice_models::service::translation::{Translate, TranslationService};
use sluice_models::service::{LoadContext, Model, ServiceError, Spelling, TranslationParams};
use sluice_models::source::{ModelSource, DEFAULT_MODEL};
use sluice_models::{DeviceSpec, ModelError};
use sluice_pipeline::config::{ConfigError, KindDoc, RawStage, RecordStage, RecordStageFactory};
use sluice_pipeline::stages::Record;
use sluice_pipeline::{ItemError, Stage, StageError, StageOptions, WorkerContext};

use crate::ModelDefaults;

/// The `[[stage]] kind = "translate"` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TranslateSection {
    model: Option<String>,
    from: String,
    to: String,
    #[serde(default = "default_text_field")]
    field: String,
    #[serde(default = "default_output_field")]
    output: String,
    beams: Option<usize>,
    max_new_tokens: Option<usize>,
    compute_type: Option<ComputeType>,
}

fn default_text_field() -> String {
    "text".into()
}

fn default_output_field() -> String {
    "translation".into()
}

/// What the reference says about `translate` stages.
pub(crate) fn doc() -> KindDoc {
    KindDoc::of::<TranslateSection>("a translation model in-process: one text field into another")
}

/// Builds a `translate` stage from its `[[stage]]` table.
pub(crate) fn build(
    stage: &RawStage,
    defaults: &ModelDefaults,
) -> Result<RecordStageFactory, ConfigError> {
    let spec: TranslateSection = stage.spec()?;
    let mut translate = TranslateStage::new(
        &stage.name,
        spec.model.as_deref().unwrap_or(DEFAULT_MODEL),
        TranslationParams {
            from: spec.from,
            to: spec.to,
            beams: spec.beams,
            max_new_tokens: spec.max_new_tokens,
            ..TranslationParams::default()
        },
        stage.options.clone(),
    );
    translate.field = spec.field;
    translate.output = spec.output;
    translate.compute_type = spec.compute_type.unwrap_or(defaults.compute_type);
    Ok(Arc::new(move || Box::new(translate.clone()) as RecordStage))
}

/// Translates `field` into `output` with a translation model.
#[derive(Clone)]
pub struct TranslateStage {
    /// The stage's name.
    pub name: String,
    /// Model directory or Hugging Face repository id.
    pub model: String,
    /// The languages and decoding settings.
    pub params: TranslationParams,
    /// Field holding the text.
    pub field: String,
    /// Field the translation is written to.
    pub output: String,
    /// int8, float32 or auto.
    pub compute_type: ComputeType,
    /// Worker settings.
    pub options: StageOptions,
    loaded: Option<(Arc<TranslationService>, Translate)>,
}

impl TranslateStage {
    /// A stage translating the `text` field of each record into `translation` with `params`.
    pub fn new(name: &str, model: &str, params: TranslationParams, options: StageOptions) -> Self {
        TranslateStage {
            name: name.into(),
            model: model.into(),
            params,
            field: default_text_field(),
            output: default_output_field(),
            compute_type: ComputeType::Auto,
            options,
            loaded: None,
        }
    }
}

/// Loads a model for a stage worker through the model service: `model` is a directory or a hub
/// id, loaded on the GPU the engine gave the worker (a stage with `gpus` set) or on the CPU.
pub fn load_model(
    model: &str,
    compute: ComputeType,
    worker: &WorkerContext,
) -> Result<Model, StageError> {
    let context = LoadContext {
        device: worker_device(worker)?,
        ..LoadContext::cpu(compute)
    };
    let source = ModelSource::parse(model);
    sluice_models::service::load(&source, &context)
        .map_err(|e| model_error(&e).context(format!("loading model {source}")))
}

/// A model that failed to load: fatal to the run when no worker could do better.
pub(crate) fn model_error(e: &ModelError) -> StageError {
    if e.is_permanent() {
        StageError::fatal(e.to_string())
    } else {
        StageError::new(e.to_string())
    }
}

/// A request the service refused at setup: no worker could do better.
pub(crate) fn service_error(e: ServiceError) -> StageError {
    match e {
        ServiceError::Model(e) => model_error(&e),
        other => StageError::fatal(other.to_string()),
    }
}

/// The device of a stage worker: `cuda:N` for the GPU the engine reserved for it, else the CPU.
pub fn worker_device(worker: &WorkerContext) -> Result<DeviceSpec, StageError> {
    let spec = match worker.gpu {
        Some(n) => DeviceSpec::Cuda(n),
        None => DeviceSpec::Cpu,
    };
    spec.select().map(|_| spec).map_err(|e| {
        StageError::fatal(format!(
            "stage {} worker {}: {e}",
            worker.stage, worker.worker
        ))
    })
}

impl Stage for TranslateStage {
    type In = Record;
    type Out = Record;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn setup(&mut self, worker: &WorkerContext) -> Result<(), StageError> {
        let service = match load_model(&self.model, self.compute_type, worker)? {
            Model::Translation(t) => t,
            other => {
                return Err(StageError::fatal(format!(
                    "{} is a {} model, not a translation model",
                    self.model,
                    other.kind()
                )))
            }
        };
        let translate = service
            .check(&self.params, Spelling::Toml)
            .map_err(service_error)?;
        self.loaded = Some((service, translate));
        Ok(())
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<Result<Record, ItemError>>, StageError> {
        let (service, translate) = self
            .loaded
            .as_ref()
            .ok_or_else(|| StageError::new("translate stage was not set up"))?;
        let texts: Vec<Result<&str, ItemError>> = batch
            .iter()
            .map(|record| {
                record
                    .get(&self.field)
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        ItemError::permanent(format!("record has no text field {:?}", self.field))
                    })
            })
            .collect();
        let read: Vec<&str> = texts.iter().flatten().copied().collect();
        let mut translated = service
            .translate(translate, &read, self.options.batch_size)
            .into_iter();
        Ok(batch
            .iter()
            .zip(texts)
            .map(|(record, text)| {
                text?;
                let text = translated
                    .next()
                    .expect("one translation per text read")
                    .map_err(|e| ItemError::permanent(format!("translating: {e}")))?;
                let mut record = record.clone();
                if let Record::Object(map) = &mut record {
                    map.insert(self.output.clone(), text.text.into());
                }
                Ok(record)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(gpu: Option<usize>) -> WorkerContext {
        WorkerContext {
            stage: "translate-0".into(),
            worker: 3,
            gpu,
            scratch: std::env::temp_dir(),
        }
    }

    #[test]
    fn a_worker_runs_on_the_gpu_it_was_given_or_says_why_it_cannot() {
        assert!(matches!(worker_device(&worker(None)), Ok(DeviceSpec::Cpu)));
        // Without CUDA in the build, a GPU worker fails at setup instead of running on the CPU.
        #[cfg(not(feature = "cuda"))]
        {
            let err = worker_device(&worker(Some(1))).unwrap_err().to_string();
            assert!(err.contains("translate-0 worker 3"), "{err}");
            assert!(
                err.contains("cuda:1") && err.contains("--features cuda"),
                "{err}"
            );
        }
    }
}
