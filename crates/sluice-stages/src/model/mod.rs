//! The `model` pipeline stage: a served model run in-process, or a remote Sluice server called
//! over `POST /v1/models/{name}/infer`.
//!
//! In-process (`local.rs`), each worker loads the model once through the model service and runs
//! what the server runs (the same parameters check, the same windows, the same graph), so outputs
//! match the server's. Remotely (`remote.rs`), a worker sends its batch in requests of
//! `request_inputs` inputs, at most `concurrency` at a time. Files go as `path` when the server shares the volume (`data_root`
//! names where the server's `--data-root` is mounted here) and as `data` otherwise. Overload and
//! lost connections (503, 502, 504, 429, connect errors, a server restarting) are retried with
//! backoff, waiting what `Retry-After` asks; a request is resent only after its previous attempt
//! failed, so no item is ever in two requests at once. A 4xx on a request of several inputs is
//! narrowed down by resending its inputs one by one, so only the bad input fails.
//!
//! ```toml
//! [[stage]]
//! kind = "model"
//! model = "models/whale-detector"        # in-process: a directory or hub id; or instead
//! # url = "http://sluice:9527/v1/models/whale"   # a remote server's model
//! field = "path"                          # the record field holding the input
//! input = "file"                          # file | text | url
//! output = "result"                       # the field the model's output is written to
//! parameters = { fromLang = "en", toLang = "fr" }   # for translation models
//! data_root = "/data"                     # remote: send paths relative to this directory
//! ```

mod local;
mod remote;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_core::storage::Location;
use sluice_models::m2m100::ComputeType;
use sluice_models::service::InferOutput;
use sluice_pipeline::config::{ConfigError, KindDoc, RawStage, RecordStage, RecordStageFactory};
use sluice_pipeline::stages::Record;
use sluice_pipeline::{ItemError, Stage, StageError, StageOptions, WorkerContext};

use crate::ModelDefaults;

/// What the record field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputAs {
    /// A local file path.
    File,
    /// The text itself.
    Text,
    /// An object-storage URL.
    Url,
}

/// The `[[stage]] kind = "model"` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// In-process: a model directory or hub id.
    pub model: Option<String>,
    /// Remote: `http://host:port/v1/models/NAME`.
    pub url: Option<String>,
    /// The record field holding the input.
    #[serde(default = "default_field")]
    pub field: String,
    /// What that field holds.
    #[serde(default = "default_input")]
    pub input: InputAs,
    /// The field the output is written to.
    #[serde(default = "default_output")]
    pub output: String,
    /// Model parameters (translation: `from`/`fromLang`, `to`/`toLang`, `beams`,
    /// `max_new_tokens`/`maxNewTokens`), checked by the model at setup (in-process) or by the
    /// server (remote).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// In-process: how a translation model computes (the command's `--compute-type` otherwise).
    pub compute_type: Option<ComputeType>,
    /// Remote: the local directory where the server's `--data-root` is mounted; files under it
    /// are sent as paths, others as data.
    pub data_root: Option<PathBuf>,
    /// Remote: inputs per request.
    #[serde(default = "default_request_inputs")]
    pub request_inputs: usize,
    /// Remote: requests in flight per worker.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Remote: attempts per request before its items fail (as transient errors).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Remote: seconds one request may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Remote: the environment variable holding the server's API key (sent as
    /// `Authorization: Bearer`), for a server started with `--api-key`.
    pub api_key_env: Option<String>,
}

fn default_field() -> String {
    "path".to_owned()
}
fn default_input() -> InputAs {
    InputAs::File
}
fn default_output() -> String {
    "result".to_owned()
}
fn default_request_inputs() -> usize {
    16
}
fn default_concurrency() -> usize {
    2
}
fn default_attempts() -> u32 {
    20
}
fn default_timeout() -> f64 {
    300.0
}

impl ModelSpec {
    /// A spec for a model run in-process.
    pub fn local(model: &str) -> Self {
        Self::with(Some(model.to_owned()), None)
    }

    /// A spec for a remote model (`http://host:port/v1/models/NAME`).
    pub fn remote(url: &str) -> Self {
        Self::with(None, Some(url.to_owned()))
    }

    fn with(model: Option<String>, url: Option<String>) -> Self {
        Self {
            model,
            url,
            field: default_field(),
            input: default_input(),
            output: default_output(),
            parameters: Map::new(),
            compute_type: None,
            data_root: None,
            request_inputs: default_request_inputs(),
            concurrency: default_concurrency(),
            max_attempts: default_attempts(),
            timeout_seconds: default_timeout(),
            api_key_env: None,
        }
    }

    fn check(&self) -> Result<(), String> {
        match (&self.model, &self.url) {
            (Some(_), Some(_)) => {
                return Err("set model (in-process) or url (remote), not both".into())
            }
            (None, None) => {
                return Err("set model = \"<dir|hub-id>\" (in-process) or url = \
                            \"http://host:9527/v1/models/NAME\" (remote)"
                    .into())
            }
            (None, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return Err(format!("url {u:?} must start with http:// or https://"))
            }
            _ => {}
        }
        if self.request_inputs == 0 || self.concurrency == 0 || self.max_attempts == 0 {
            return Err("request_inputs, concurrency and max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// What the reference says about `model` stages.
pub(crate) fn doc() -> KindDoc {
    KindDoc::of::<ModelSpec>(
        "any served model on one field of each record, in-process or on a remote Sluice server",
    )
}

/// Builds a `model` stage from its `[[stage]]` table.
pub(crate) fn build(
    stage: &RawStage,
    defaults: &ModelDefaults,
) -> Result<RecordStageFactory, ConfigError> {
    let mut spec: ModelSpec = stage.spec()?;
    spec.check().map_err(|m| stage.error(&m))?;
    spec.compute_type.get_or_insert(defaults.compute_type);
    let model = ModelStage::new(&stage.name, spec, stage.options.clone());
    Ok(Arc::new(move || Box::new(model.clone()) as RecordStage))
}
/// A worker's way to the model.
enum Access {
    Local(Box<dyn local::LocalModel>),
    Remote(remote::Remote),
}

/// Runs a model on one field of each record; see the module documentation.
pub struct ModelStage {
    name: String,
    spec: ModelSpec,
    options: StageOptions,
    backend: Option<Access>,
    /// The run's scratch directory, where a long file's window rows go.
    scratch: Option<PathBuf>,
}

impl Clone for ModelStage {
    fn clone(&self) -> Self {
        // A clone is a fresh worker: it loads or connects in its own `setup`.
        Self {
            name: self.name.clone(),
            spec: self.spec.clone(),
            options: self.options.clone(),
            backend: None,
            scratch: None,
        }
    }
}

impl ModelStage {
    /// A stage named `name`.
    pub fn new(name: &str, spec: ModelSpec, options: StageOptions) -> Self {
        Self {
            name: name.to_owned(),
            spec,
            options,
            backend: None,
            scratch: None,
        }
    }
}

impl Stage for ModelStage {
    type In = Record;
    type Out = Record;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn setup(&mut self, worker: &WorkerContext) -> Result<(), StageError> {
        self.spec.check().map_err(StageError::fatal)?;
        self.scratch = Some(worker.scratch.clone());
        self.backend = Some(match (&self.spec.model, &self.spec.url) {
            (Some(model), _) => Access::Local(local::load(&self.spec, model, worker)?),
            (None, Some(url)) => Access::Remote(remote::Remote::connect(&self.spec, url)?),
            (None, None) => unreachable!("checked above"),
        });
        Ok(())
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<Result<Record, ItemError>>, StageError> {
        let backend = self
            .backend
            .as_ref()
            .ok_or_else(|| StageError::new("model stage was not set up"))?;
        let outputs = match backend {
            Access::Local(local) => local.run(&self.spec, batch, self.scratch.as_deref()),
            Access::Remote(remote) => remote
                .run(&self.spec, batch)
                .into_iter()
                .map(|out| out.and_then(output_value))
                .collect(),
        };
        let output = self.spec.output.clone();
        Ok(batch
            .iter()
            .zip(outputs)
            .map(|(record, out)| {
                let value = out?;
                let mut record = record.clone();
                let Record::Object(map) = &mut record else {
                    return Err(ItemError::permanent("the record is not a JSON object"));
                };
                map.insert(output.clone(), value);
                Ok(record)
            })
            .collect())
    }
}
/// A model's output as the value of the record's output field (its id is the record's).
fn output_value(out: InferOutput) -> Result<Value, ItemError> {
    let mut value = serde_json::to_value(out).map_err(|e| ItemError::permanent(e.to_string()))?;
    if let Value::Object(v) = &mut value {
        v.remove("id");
    }
    Ok(value)
}

/// The input of one record: the field's string.
fn field<'a>(spec: &ModelSpec, record: &'a Record) -> Result<&'a str, ItemError> {
    record
        .get(&spec.field)
        .and_then(Value::as_str)
        .ok_or_else(|| ItemError::permanent(format!("record has no string field {:?}", spec.field)))
}

/// Reads a file or object named by a record, for in-process models and `data` sends.
fn read_bytes(spec: &ModelSpec, value: &str) -> Result<Vec<u8>, ItemError> {
    match spec.input {
        InputAs::File => {
            std::fs::read(value).map_err(|e| ItemError::permanent(format!("reading {value}: {e}")))
        }
        InputAs::Url => Location::read_url_blocking::<&str, &str>(value, &[])
            .map(|b| b.to_vec())
            .map_err(|e| ItemError::permanent(e.to_string())),
        InputAs::Text => Ok(value.as_bytes().to_vec()),
    }
}

/// The same failure for every item of a batch (the model failed on the batch as a whole).
fn all_failed<T>(batch: &[Record], e: impl std::fmt::Display) -> Vec<Result<T, ItemError>> {
    let m = e.to_string();
    batch
        .iter()
        .map(|_| Err(ItemError::permanent(m.clone())))
        .collect()
}
