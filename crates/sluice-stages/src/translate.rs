//! `translate`: the M2M100 engine in-process, translating one text field of each record into
//! another field. Each worker loads the model once (local directory or Hugging Face cache).
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
//! compute_type = "int8"             # int8 | float32 | auto (SLUICE_COMPUTE_TYPE otherwise)
//! ```

use std::sync::Arc;

use serde::Deserialize;
use sluice_models::m2m100::{ComputeType, GenerationOptions, M2M100};
use sluice_models::source::{HubSettings, ModelSource, DEFAULT_MODEL};
use sluice_models::ModelError;
use sluice_pipeline::config::{ConfigError, RawStage, RecordStage, RecordStageFactory};
use sluice_pipeline::stages::Record;
use sluice_pipeline::{ItemError, Stage, StageError, StageOptions, WorkerContext};

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

/// Builds a `translate` stage from its `[[stage]]` table.
pub(crate) fn build(stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
    let spec: TranslateSection = stage.spec()?;
    let model = spec.model.unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let mut translate = TranslateStage::new(
        &stage.name,
        &model,
        &spec.from,
        &spec.to,
        &spec.field,
        &spec.output,
        stage.options.clone(),
    );
    translate.generation.num_beams = spec.beams;
    translate.generation.max_new_tokens = spec.max_new_tokens;
    translate.compute_type = match spec.compute_type {
        Some(c) => c,
        None => ComputeType::from_env().map_err(|e| stage.error(e))?,
    };
    Ok(Arc::new(move || Box::new(translate.clone()) as RecordStage))
}

/// Translates `field` into `output` with an M2M100 model.
#[derive(Clone)]
pub struct TranslateStage {
    /// The stage's name.
    pub name: String,
    /// Model directory or Hugging Face repository id.
    pub model: String,
    /// Source language code.
    pub from: String,
    /// Target language code.
    pub to: String,
    /// Field holding the text.
    pub field: String,
    /// Field the translation is written to.
    pub output: String,
    /// Beam search and length settings.
    pub generation: GenerationOptions,
    /// int8, float32 or auto (`SLUICE_COMPUTE_TYPE` when the pipeline does not say).
    pub compute_type: ComputeType,
    /// Worker settings.
    pub options: StageOptions,
    loaded: Option<Arc<M2M100>>,
}

impl TranslateStage {
    /// A stage translating `field` from `from` to `to` into `output`.
    pub fn new(
        name: &str,
        model: &str,
        from: &str,
        to: &str,
        field: &str,
        output: &str,
        options: StageOptions,
    ) -> Self {
        TranslateStage {
            name: name.into(),
            model: model.into(),
            from: from.into(),
            to: to.into(),
            field: field.into(),
            output: output.into(),
            generation: GenerationOptions::default(),
            compute_type: ComputeType::Auto,
            options,
            loaded: None,
        }
    }
}

/// Loads an M2M100 model for a stage worker: `model` is a directory or a hub id, loaded on the
/// GPU the engine gave the worker (a stage with `gpus` set) or on the CPU, chosen the way
/// `sluice serve --device` chooses.
pub fn load_m2m100(
    model: &str,
    compute: ComputeType,
    worker: &WorkerContext,
) -> Result<M2M100, StageError> {
    let device = worker_device(worker)?;
    let source = ModelSource::parse(model);
    let dir = source
        .resolve(&HubSettings::from_env())
        .map_err(|e| model_error(&e))?;
    M2M100::load(&dir, &device, compute)
        .map_err(|e| model_error(&e).context(format!("loading model {source}")))
}

/// A model that failed to load: fatal to the run when no worker could do better.
pub(crate) fn model_error(e: &sluice_models::ModelError) -> StageError {
    if e.is_permanent() {
        StageError::fatal(e.to_string())
    } else {
        StageError::new(e.to_string())
    }
}

/// The device of a stage worker: `cuda:N` for the GPU the engine reserved for it, else the CPU.
pub fn worker_device(worker: &WorkerContext) -> Result<candle_core::Device, StageError> {
    let spec = match worker.gpu {
        Some(n) => format!("cuda:{n}"),
        None => "cpu".to_owned(),
    };
    sluice_models::device::select(&spec).map_err(|e| {
        StageError::fatal(format!(
            "stage {} worker {}: {e}",
            worker.stage, worker.worker
        ))
    })
}

/// One translation per record of a batch whose texts were read (a record whose text could not
/// be read keeps its error), under the failure policy of every translation path
/// ([`M2M100::translate_each`]): a text the model cannot take fails alone. Only what affects
/// every text (an unknown language) fails the call.
pub(crate) fn translate_read<S: AsRef<str>>(
    model: &M2M100,
    texts: &[Result<S, ItemError>],
    (from, to): (&str, &str),
    opts: &GenerationOptions,
    batch_size: usize,
) -> Result<Vec<Result<String, ItemError>>, ModelError> {
    let read: Vec<&str> = texts.iter().flatten().map(AsRef::as_ref).collect();
    let mut translated = model
        .translate_each(&read, from, to, opts, batch_size)?
        .into_iter();
    Ok(texts
        .iter()
        .map(|text| {
            text.as_ref().map_err(Clone::clone)?;
            translated
                .next()
                .expect("one translation per text read")
                .map_err(|e| ItemError::permanent(format!("translating: {e}")))
        })
        .collect())
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
        let model = load_m2m100(&self.model, self.compute_type, worker)?;
        for code in [&self.from, &self.to] {
            model
                .tokenizer()
                .lang_id(code)
                .map_err(|e| model_error(&e))?;
        }
        self.loaded = Some(Arc::new(model));
        Ok(())
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<Result<Record, ItemError>>, StageError> {
        let model = self
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
        let translated = translate_read(
            model,
            &texts,
            (&self.from, &self.to),
            &self.generation,
            self.options.batch_size,
        )
        .map_err(|e| model_error(&e).context("translating"))?;
        Ok(batch
            .iter()
            .zip(translated)
            .map(|(record, text)| {
                let mut record = record.clone();
                if let Record::Object(map) = &mut record {
                    map.insert(self.output.clone(), text?.into());
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
        assert!(matches!(
            worker_device(&worker(None)),
            Ok(candle_core::Device::Cpu)
        ));
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
