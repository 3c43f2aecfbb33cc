//! The `model` pipeline stage: a served model run in-process, or a remote Sluice server called
//! over `POST /v1/models/{name}/infer`.
//!
//! In-process, each worker loads the model once and runs the same preparation as the server
//! ([`sluice_serve::classify::prepare`], the same windows, the same graph), so scores match the
//! server's. Remotely, a worker sends its batch in requests of `request_inputs` inputs, at most
//! `concurrency` at a time. Files go as `path` when the server shares the volume (`data_root`
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_core::storage::Location;
use sluice_models::classifier::AudioClassifier;
use sluice_models::m2m100::{GenerationOptions, M2M100};
use sluice_pipeline::config::{ConfigError, RawStage, RecordStage, RecordStageFactory};
use sluice_pipeline::stages::Record;
use sluice_pipeline::{ItemError, Stage, StageError, StageOptions, WorkerContext};

use sluice_serve::infer::{InferOutput, WindowScores};

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
    /// Model parameters (translation: `fromLang`, `toLang`, `beams`, `maxNewTokens`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
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

/// Builds a `model` stage from its `[[stage]]` table.
pub(crate) fn build(stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
    let spec: ModelSpec = stage.spec()?;
    spec.check().map_err(|m| stage.error(&m))?;
    let model = ModelStage::new(&stage.name, spec, stage.options.clone());
    Ok(Arc::new(move || Box::new(model.clone()) as RecordStage))
}

/// A model loaded in a worker.
enum Local {
    Classifier(Arc<AudioClassifier>),
    Translation(Arc<M2M100>),
}

/// A worker's way to the model.
enum Access {
    Local(Local),
    Remote {
        client: reqwest::Client,
        runtime: tokio::runtime::Runtime,
    },
}

/// Runs a model on one field of each record; see the module documentation.
pub struct ModelStage {
    name: String,
    spec: ModelSpec,
    options: StageOptions,
    backend: Option<Access>,
    /// The run's scratch directory, where a long file's window rows go ([`Rows`]).
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
            (Some(model), _) => Access::Local(load_local(model, worker)?),
            (None, Some(_)) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StageError::new(format!("async runtime: {e}")))?;
                // The client's connector belongs to the runtime that drives it.
                let _inside = runtime.enter();
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs_f64(self.spec.timeout_seconds))
                    .default_headers(auth_headers(self.spec.api_key_env.as_deref())?)
                    .build()
                    .map_err(|e| StageError::new(format!("HTTP client: {e}")))?;
                Access::Remote { client, runtime }
            }
            (None, None) => unreachable!("checked above"),
        });
        if let (Some(Access::Remote { client, runtime }), Some(url)) =
            (&self.backend, &self.spec.url)
        {
            // One request before the first batch: a server whose certificate is not trusted will
            // not become trusted by retrying, so the run stops here and says why. Any other
            // failure (a server still starting) is left to the batches' retries.
            if let Err(e) = runtime.block_on(async { client.get(url).send().await }) {
                if let Some(why) = untrusted_certificate(&e) {
                    return Err(StageError::fatal(untrusted_message(url, &why)));
                }
            }
            // A server that refuses this key, or serves no such model, will not change its mind.
            if let Some((listing, name)) = models_listing(url) {
                let answer = runtime.block_on(async {
                    let r = client.get(&listing).send().await?;
                    let status = r.status();
                    Ok::<_, reqwest::Error>((status, r.text().await.unwrap_or_default()))
                });
                if let Ok((status, body)) = answer {
                    check_listing(url, name, status, &body).map_err(StageError::fatal)?;
                }
            }
        }
        Ok(())
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<Result<Record, ItemError>>, StageError> {
        let backend = self
            .backend
            .as_ref()
            .ok_or_else(|| StageError::new("model stage was not set up"))?;
        let outputs = match backend {
            Access::Local(local) => run_local(&self.spec, local, batch, self.scratch.as_deref()),
            Access::Remote { client, runtime } => runtime
                .block_on(run_remote(&self.spec, client, batch))
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

/// Audio classifiers run on the CPU (as in the server); translation models on the worker's
/// device ([`crate::translate::worker_device`]).
fn load_local(model: &str, worker: &WorkerContext) -> Result<Local, StageError> {
    let dir = Path::new(model);
    if AudioClassifier::is_classifier_dir(dir) {
        let c = AudioClassifier::load(dir).map_err(|e| crate::translate::model_error(&e))?;
        return Ok(Local::Classifier(Arc::new(c)));
    }
    let compute = sluice_models::m2m100::ComputeType::from_env().map_err(StageError::fatal)?;
    let m = crate::translate::load_m2m100(model, compute, worker)?;
    Ok(Local::Translation(Arc::new(m)))
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

type Outcome = Result<InferOutput, ItemError>;

fn run_local(
    spec: &ModelSpec,
    local: &Local,
    batch: &[Record],
    scratch: Option<&Path>,
) -> Vec<Result<Value, ItemError>> {
    match local {
        Local::Classifier(c) => classify_local(spec, c, batch, scratch),
        Local::Translation(m) => translate_local(spec, m, batch)
            .into_iter()
            .map(|out| out.and_then(output_value))
            .collect(),
    }
}

/// Windows run through the graph together, across the files of a batch, as the server batches
/// them across requests; also the most windows held at once, whatever the files' lengths.
const WINDOW_RUN: usize = 64;

/// The most window rows of one file held in memory; a longer file's rows go to a row file in
/// the run's scratch directory as they are scored ([`sluice_pipeline::rows`]), so a day-long
/// recording's 172,800 rows are never held. 512 windows is 4 minutes at the test classifier's
/// half-second hop.
const HELD_WINDOWS: usize = 512;

/// One file's window rows so far.
enum Rows {
    /// In memory, up to [`HELD_WINDOWS`].
    Held(Vec<WindowScores>),
    /// Past that, on disk.
    Written(sluice_pipeline::rows::RowsWriter),
}

impl Rows {
    /// Adds one window's row, moving the rows to a row file in `scratch` once they are too many
    /// to hold (they stay in memory when there is no scratch directory).
    fn push(&mut self, row: WindowScores, scratch: Option<&Path>) -> std::io::Result<()> {
        match self {
            Rows::Held(rows) => {
                rows.push(row);
                if let (true, Some(dir)) = (rows.len() > HELD_WINDOWS, scratch) {
                    let mut writer = sluice_pipeline::rows::RowsWriter::create(dir)?;
                    rows.iter().try_for_each(|r| writer.push(r))?;
                    *self = Rows::Written(writer);
                }
                Ok(())
            }
            Rows::Written(writer) => writer.push(&row),
        }
    }

    /// The record's output field: the duration and the rows, or the row file's reference.
    fn output(self, duration: f64) -> Result<Value, ItemError> {
        let windows = match self {
            Rows::Held(rows) => serde_json::to_value(rows),
            Rows::Written(writer) => {
                return writer
                    .finish()
                    .map(|rows| json!({"duration": duration, "windows": rows}))
                    .map_err(|e| ItemError::transient(format!("writing window rows: {e}")))
            }
        };
        let windows = windows.map_err(|e| ItemError::permanent(e.to_string()))?;
        Ok(json!({"duration": duration, "windows": windows}))
    }

    /// Drops the rows of a file that failed.
    fn discard(self) {
        if let Rows::Written(writer) = self {
            writer.discard();
        }
    }
}

/// Classifies each record's file streaming ([`sluice_serve::classify::prepare_stream`]): windows
/// are scored in runs of [`WINDOW_RUN`] as they are cut, so a day-long recording holds one
/// decoded chunk and one run of windows, not the file, and its rows go to disk past
/// [`HELD_WINDOWS`].
fn classify_local(
    spec: &ModelSpec,
    classifier: &AudioClassifier,
    batch: &[Record],
    scratch: Option<&Path>,
) -> Vec<Result<Value, ItemError>> {
    let labels = &classifier.spec().labels;
    let mut results: Vec<Result<Rows, ItemError>> = Vec::with_capacity(batch.len());
    let mut durations = vec![0.0; batch.len()];
    // Windows cut but not yet scored: (record, start, end, samples).
    let mut pending: Vec<(usize, f64, f64, Vec<f32>)> = Vec::new();
    let mut graph_error: Option<String> = None;
    let score = |pending: &mut Vec<(usize, f64, f64, Vec<f32>)>,
                 results: &mut Vec<Result<Rows, ItemError>>|
     -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let samples: Vec<Vec<f32>> = pending
            .iter_mut()
            .map(|w| std::mem::take(&mut w.3))
            .collect();
        let scores = classifier.run(&samples).map_err(|e| e.to_string())?;
        for ((item, start, end, _), s) in pending.drain(..).zip(scores) {
            let Some(Ok(rows)) = results.get_mut(item) else {
                continue;
            };
            let row = sluice_serve::classify::window_scores(labels, start, end, s);
            if let Err(e) = rows.push(row, scratch) {
                let failed = std::mem::replace(
                    &mut results[item],
                    Err(ItemError::transient(format!("writing window rows: {e}"))),
                );
                if let Ok(rows) = failed {
                    rows.discard();
                }
            }
        }
        Ok(())
    };
    for (i, record) in batch.iter().enumerate() {
        results.push(Ok(Rows::Held(Vec::new())));
        let prepared = open_audio(spec, record).and_then(|(source, value)| {
            sluice_serve::classify::prepare_stream(
                classifier,
                source,
                Some(value),
                sluice_audio::decode::DEFAULT_CHUNK_FRAMES,
                |windows| {
                    pending.extend(windows.into_iter().map(|w| (i, w.start, w.end, w.samples)));
                    if pending.len() >= WINDOW_RUN {
                        // The graph failing fails the whole batch, not this file: noted here,
                        // acted on below.
                        score(&mut pending, &mut results).inspect_err(|e| {
                            graph_error = Some(e.clone());
                        })?;
                    }
                    Ok(())
                },
            )
            .map_err(|e| ItemError::permanent(format!("{value}: {e}")))
        });
        if let Some(e) = graph_error {
            results.into_iter().flatten().for_each(Rows::discard);
            return all_failed(batch, e);
        }
        match prepared {
            Ok(duration) => durations[i] = duration,
            Err(e) => {
                pending.retain(|w| w.0 != i);
                if let Ok(rows) = std::mem::replace(&mut results[i], Err(e)) {
                    rows.discard();
                }
            }
        }
    }
    if let Err(e) = score(&mut pending, &mut results) {
        results.into_iter().flatten().for_each(Rows::discard);
        return all_failed(batch, e);
    }
    results
        .into_iter()
        .zip(durations)
        .map(|(rows, duration)| rows.and_then(|rows| rows.output(duration)))
        .collect()
}

/// The file a record names, opened for reading in chunks, with the name it was given.
fn open_audio<'a>(
    spec: &ModelSpec,
    record: &'a Record,
) -> Result<(std::fs::File, &'a str), ItemError> {
    let value = field(spec, record)?;
    let source = match spec.input {
        InputAs::File => std::fs::File::open(value)
            .map_err(|e| ItemError::permanent(format!("reading {value}: {e}")))?,
        InputAs::Url => Location::open_url_blocking::<&str, &str>(value, &[])
            .map_err(|e| ItemError::permanent(e.to_string()))?,
        InputAs::Text => {
            return Err(ItemError::permanent(
                "an audio classifier takes files or URLs, not text",
            ))
        }
    };
    Ok((source, value))
}

/// The same failure for every item of a batch (the model failed on the batch as a whole).
fn all_failed<T>(batch: &[Record], e: impl std::fmt::Display) -> Vec<Result<T, ItemError>> {
    let m = e.to_string();
    batch
        .iter()
        .map(|_| Err(ItemError::permanent(m.clone())))
        .collect()
}

fn translate_local(spec: &ModelSpec, model: &M2M100, batch: &[Record]) -> Vec<Outcome> {
    let param = |k: &str| {
        spec.parameters
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (from, to) = (param("fromLang"), param("toLang"));
    let texts: Vec<Result<String, ItemError>> = batch
        .iter()
        .map(|record| {
            let value = field(spec, record)?;
            String::from_utf8(read_bytes(spec, value)?)
                .map_err(|_| ItemError::permanent(format!("{value} is not UTF-8 text")))
        })
        .collect();
    let opts = GenerationOptions {
        num_beams: spec
            .parameters
            .get("beams")
            .and_then(Value::as_u64)
            .map(|b| b as usize),
        max_new_tokens: spec
            .parameters
            .get("maxNewTokens")
            .and_then(Value::as_u64)
            .map(|b| b as usize),
        ..GenerationOptions::default()
    };
    let batch_size = texts.len().max(1);
    match crate::translate::translate_read(model, &texts, (from, to), &opts, batch_size) {
        Ok(translated) => translated
            .into_iter()
            .map(|text| {
                Ok(InferOutput {
                    text: Some(text?),
                    ..InferOutput::default()
                })
            })
            .collect(),
        Err(e) => all_failed(batch, e),
    }
}

/// Builds the request input for one record: a path under `data_root`, else the data or text.
fn remote_input(spec: &ModelSpec, i: usize, record: &Record) -> Result<Value, ItemError> {
    let value = field(spec, record)?;
    let id = i.to_string();
    Ok(match spec.input {
        InputAs::Text => json!({"id": id, "text": value}),
        InputAs::Url => json!({"id": id, "url": value}),
        InputAs::File => {
            let shared = spec
                .data_root
                .as_ref()
                .and_then(|root| Path::new(value).strip_prefix(root).ok());
            match shared {
                Some(rel) => json!({"id": id, "path": rel.to_string_lossy()}),
                None => {
                    let bytes = read_bytes(spec, value)?;
                    json!({"id": id, "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
                }
            }
        }
    })
}

async fn run_remote(spec: &ModelSpec, client: &reqwest::Client, batch: &[Record]) -> Vec<Outcome> {
    use futures::stream::{self, StreamExt};
    let mut outcomes: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
    let mut ready = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        match remote_input(spec, i, record) {
            Ok(input) => ready.push((i, input)),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    let chunks: Vec<Vec<(usize, Value)>> = ready
        .chunks(spec.request_inputs)
        .map(<[_]>::to_vec)
        .collect();
    let results: Vec<Vec<(usize, Outcome)>> = stream::iter(chunks)
        .map(|chunk| send_narrowing(spec, client, chunk))
        .buffer_unordered(spec.concurrency)
        .collect()
        .await;
    for (i, outcome) in results.into_iter().flatten() {
        outcomes[i] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(ItemError::permanent("no answer for this input"))))
        .collect()
}

/// Sends one request; when the server refuses it for one of its inputs (4xx), resends the
/// inputs one by one so that only the bad one fails.
async fn send_narrowing(
    spec: &ModelSpec,
    client: &reqwest::Client,
    chunk: Vec<(usize, Value)>,
) -> Vec<(usize, Outcome)> {
    match send(spec, client, &chunk).await {
        Ok(outputs) => chunk
            .iter()
            .map(|(i, _)| *i)
            .zip(outputs.into_iter().map(Ok))
            .collect(),
        Err(RequestFailure::Input(_)) if chunk.len() > 1 => {
            let mut out = Vec::with_capacity(chunk.len());
            for one in chunk {
                let i = one.0;
                let outcome = match send(spec, client, std::slice::from_ref(&one)).await {
                    Ok(mut o) if o.len() == 1 => Ok(o.remove(0)),
                    Ok(_) => Err(ItemError::permanent(
                        "the server answered a wrong output count",
                    )),
                    Err(f) => Err(f.item_error()),
                };
                out.push((i, outcome));
            }
            out
        }
        Err(f) => {
            let e = f.item_error();
            chunk.iter().map(|(i, _)| (*i, Err(e.clone()))).collect()
        }
    }
}

/// The TLS error of a request refused because the server's certificate is not trusted (or
/// not valid for its name), found down the error's causes.
fn untrusted_certificate(e: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(
            t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = c.downcast_ref::<rustls::Error>()
        {
            return Some(t.to_string());
        }
        // An I/O error's `source` skips the error it wraps (where the TLS error sits, sometimes
        // inside a second I/O error), so the walk goes through it instead.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

/// `Authorization: Bearer` from the variable `env`, when a key is configured.
fn auth_headers(env: Option<&str>) -> Result<reqwest::header::HeaderMap, StageError> {
    let mut headers = reqwest::header::HeaderMap::new();
    let Some(env) = env else {
        return Ok(headers);
    };
    let key = std::env::var(env)
        .map_err(|_| StageError::fatal(format!("api_key_env: {env} is not set")))?;
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
        .map_err(|_| StageError::fatal(format!("api_key_env: {env} is not a usable key")))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// For `http://host/.../v1/models/NAME`, the server's model list and NAME.
fn models_listing(url: &str) -> Option<(String, &str)> {
    let (base, name) = url.trim_end_matches('/').rsplit_once('/')?;
    base.ends_with("/v1/models")
        .then(|| (base.to_owned(), name))
        .filter(|_| !name.is_empty())
}

/// Whether the model list a server answered names `name`; why not as a message.
fn check_listing(
    url: &str,
    name: &str,
    status: reqwest::StatusCode,
    body: &str,
) -> Result<(), String> {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(format!(
            "{url}: the server needs an API key this stage does not have: name the variable \
             holding it with api_key_env (or check the key)"
        ));
    }
    if !status.is_success() {
        // Starting, overloaded, or not Sluice: the batches' retries will tell.
        return Ok(());
    }
    let Ok(models) = serde_json::from_str::<Vec<Value>>(body) else {
        return Ok(());
    };
    let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    if names.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "{url}: the server serves no model {name:?} (it serves {})",
            names.join(", ")
        ))
    }
}

fn untrusted_message(url: &str, why: &str) -> String {
    format!(
        "{url}: {why}: the server's certificate is not trusted here; add its certificate \
         authority to the system's store or name it in SSL_CERT_FILE"
    )
}

/// Why a request got no outputs.
enum RequestFailure {
    /// The server refused the request's content (4xx), or its certificate is not trusted:
    /// permanent.
    Input(String),
    /// Retries ran out on overload or lost connections: transient.
    Unavailable(String),
}

impl RequestFailure {
    fn item_error(self) -> ItemError {
        match self {
            RequestFailure::Input(m) => ItemError::permanent(m),
            RequestFailure::Unavailable(m) => ItemError::transient(m),
        }
    }
}

/// One request, retried with backoff while the server is overloaded or unreachable.
async fn send(
    spec: &ModelSpec,
    client: &reqwest::Client,
    chunk: &[(usize, Value)],
) -> Result<Vec<InferOutput>, RequestFailure> {
    let url = format!(
        "{}/infer",
        spec.url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
    );
    let body = json!({
        "inputs": chunk.iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "parameters": spec.parameters,
    });
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=spec.max_attempts {
        let wait = match client.post(&url).json(&body).send().await {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(Duration::from_secs_f64);
                let text = resp.text().await.unwrap_or_default();
                if status.is_success() {
                    let parsed: sluice_serve::infer::InferResponse = serde_json::from_str(&text)
                        .map_err(|e| {
                            RequestFailure::Input(format!("{url}: unreadable answer: {e}"))
                        })?;
                    if parsed.outputs.len() != chunk.len() {
                        return Err(RequestFailure::Input(format!(
                            "{url}: {} outputs for {} inputs",
                            parsed.outputs.len(),
                            chunk.len()
                        )));
                    }
                    return Ok(parsed.outputs);
                }
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                last = format!("{url}: {status}: {message}");
                let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                if !retryable {
                    return Err(if status.is_client_error() {
                        RequestFailure::Input(last)
                    } else {
                        RequestFailure::Unavailable(last)
                    });
                }
                // At least what the server asks, and never a tight loop when it asks for 0 s.
                retry_after.map_or(backoff, |r| r.max(Duration::from_millis(50)))
            }
            Err(e) => {
                if let Some(why) = untrusted_certificate(&e) {
                    return Err(RequestFailure::Input(untrusted_message(&url, &why)));
                }
                // Connect errors, resets and timeouts: the server is restarting or gone.
                last = format!("{url}: {e}");
                backoff
            }
        };
        if attempt < spec.max_attempts {
            tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, error = %last, "retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    Err(RequestFailure::Unavailable(format!(
        "{last} (gave up after {} attempts)",
        spec.max_attempts
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_audio::encode::{encode, AudioFormat, WavSample};
    use sluice_audio::Audio;

    fn write_tone(path: &Path, seconds: usize) {
        let rate = 16_000;
        let samples = (0..rate * seconds)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 0.5)
            .collect();
        let audio = Audio {
            sample_rate: rate as u32,
            channels: vec![samples],
        };
        std::fs::write(
            path,
            encode(&audio, AudioFormat::Wav(WavSample::I16)).unwrap(),
        )
        .unwrap();
    }

    /// A file with more windows than are held has them in a row file, which reads back to
    /// exactly the rows held in memory without a scratch directory; a short file's stay inline.
    #[test]
    fn a_long_files_rows_go_to_a_row_file_that_reads_back_as_the_held_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (long, short) = (dir.path().join("long.wav"), dir.path().join("short.wav"));
        write_tone(&long, 300);
        write_tone(&short, 10);
        let model = sluice_testkit::fixture("onnx").join("tone-detector");
        let classifier = AudioClassifier::load(&model).unwrap();
        let spec = ModelSpec::local(model.to_str().unwrap());
        let batch = [
            json!({"path": long.to_str().unwrap()}),
            json!({"path": short.to_str().unwrap()}),
        ];
        let held: Vec<Value> = classify_local(&spec, &classifier, &batch, None)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(held[0]["windows"].as_array().unwrap().len() > HELD_WINDOWS);
        let scratch = tempfile::tempdir().unwrap();
        let mut written: Vec<Value> =
            classify_local(&spec, &classifier, &batch, Some(scratch.path()))
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let file = sluice_pipeline::rows::row_file(&written[0]["windows"]).map(Path::to_path_buf);
        assert!(
            file.is_some_and(|f| f.starts_with(scratch.path())),
            "{}",
            written[0]
        );
        assert!(written[1]["windows"].is_array());
        sluice_pipeline::rows::inline(&mut written[0]).unwrap();
        assert_eq!(written, held);
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }
}
