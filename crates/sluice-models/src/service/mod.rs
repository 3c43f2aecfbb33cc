//! The model service: one way to load a model and one interface to run it, below both the
//! server and the pipeline stages.
//!
//! [`load`] takes a source, a device and a compute type as values, resolves the source to a
//! directory (a hub id is downloaded into the cache first), recognises the model's kind once and
//! returns its service as a [`Model`]. Every kind implements [`ModelService`]: how request
//! parameters are read and checked, how one input is cut into batchable work, how a batch runs
//! and how results are folded back into the input's output, and how the kind looks over the Open
//! Inference Protocol. The server's batcher, the `model` stage and `sluice translate` drive every
//! kind through those methods, so they hold no per-kind code.
//!
//! A new model kind is a module here implementing [`ModelService`], a variant of [`Model`] and
//! a line in [`KINDS`].

pub mod classifier;
pub mod io;
pub mod translation;

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

pub use io::{
    InferInput, InferOutput, InferRequest, InferResponse, NamedTensor, Parameters, Tensor,
    TensorInfo, WindowScores,
};
pub use translation::{Spelling, TranslationLimits, TranslationParams};

use crate::device::DeviceSpec;
use crate::m2m100::ComputeType;
use crate::source::{HubSettings, ModelSource, ObjectSettings};
use crate::ModelError;

/// What a load needs besides the source, passed as values (never through the environment).
#[derive(Debug, Clone)]
pub struct LoadContext {
    /// Where models that can use a GPU run.
    pub device: DeviceSpec,
    /// How translation models compute.
    pub compute: ComputeType,
    /// How hub ids are resolved.
    pub hub: HubSettings,
    /// Where object-storage models are cached and how the store is reached.
    pub objects: ObjectSettings,
    /// Bounds on what one translation request may ask for.
    pub translation: TranslationLimits,
}

impl LoadContext {
    /// The CPU, `compute`, the hub as the environment configures it, and no bounds on requests
    /// beyond the model's own (an in-process caller's context).
    pub fn cpu(compute: ComputeType) -> Self {
        Self {
            device: DeviceSpec::Cpu,
            compute,
            hub: HubSettings::from_env(),
            objects: ObjectSettings::from_env(),
            translation: TranslationLimits::none(),
        }
    }
}

/// A loaded model: the service of its kind.
#[derive(Clone)]
pub enum Model {
    /// M2M100 translation.
    Translation(Arc<translation::TranslationService>),
    /// An ONNX audio classifier.
    Classifier(Arc<classifier::ClassifierService>),
}

/// Runs `$body` with `$s` bound to the model's service, whatever its kind: the one place the
/// kinds are listed for code that is generic over [`ModelService`].
#[macro_export]
macro_rules! with_service {
    ($model:expr, $s:ident => $body:expr) => {{
        #[allow(unused_imports)]
        use $crate::service::ModelService as _;
        match $model {
            $crate::service::Model::Translation($s) => $body,
            $crate::service::Model::Classifier($s) => $body,
        }
    }};
}

impl Model {
    /// The kind's name (`translation`, `audio-classifier`).
    pub fn kind(&self) -> &'static str {
        with_service!(self, s => s.kind())
    }

    /// The translation service, when this is a translation model.
    pub fn translation(&self) -> Option<&Arc<translation::TranslationService>> {
        match self {
            Model::Translation(t) => Some(t),
            _ => None,
        }
    }
}

/// How a kind is recognised in a model directory and loaded from it.
pub struct Kind {
    /// The kind's name.
    pub name: &'static str,
    /// Whether a directory holds a model of this kind.
    pub detect: fn(&Path) -> bool,
    /// Loads it.
    pub load: fn(&Path, &LoadContext) -> Result<Model, ModelError>,
}

/// Every kind, in the order they are tried on a directory: the first whose `detect` holds
/// loads it. Translation takes any directory, so it comes last.
pub const KINDS: &[Kind] = &[classifier::KIND, translation::KIND];

/// The kind of the model in `dir`.
pub fn detect(dir: &Path) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| (k.detect)(dir))
        .unwrap_or(&KINDS[KINDS.len() - 1])
}

/// Loads the model `source` names: a hub id or an object-storage prefix is resolved (copied
/// into its cache) first, so its files decide its kind like a directory's do.
pub fn load(source: &ModelSource, context: &LoadContext) -> Result<Model, ModelError> {
    let dir = source.resolve_with(&context.hub, &context.objects)?;
    let kind = detect(&dir);
    let model = (kind.load)(&dir, context)?;
    tracing::info!(source = %source, kind = kind.name, "loaded model");
    Ok(model)
}

/// What an input of a kind holds, so a transport knows how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Text: inline, or bytes that must be UTF-8.
    Text,
    /// Encoded audio, read in chunks (any length).
    Audio,
}

impl InputKind {
    /// The name `GET /v1/models` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Text => "text",
            InputKind::Audio => "audio",
        }
    }
}

/// Something that can be read from its start and in chunks.
pub trait ReadSeek: std::io::Read + std::io::Seek + Send + Sync {}

impl<T: std::io::Read + std::io::Seek + Send + Sync> ReadSeek for T {}

/// One input's content, as its transport read it.
pub enum Content {
    /// Inline text.
    Text(String),
    /// Bytes held whole, with the name they came from (a format hint).
    Bytes {
        /// The bytes.
        bytes: Vec<u8>,
        /// The path or URL, when there is one.
        name: Option<String>,
    },
    /// A file or object to read in chunks, with its name.
    Stream {
        /// The reader.
        reader: Box<dyn ReadSeek>,
        /// The path or URL.
        name: Option<String>,
    },
}

/// What a kind says about itself to clients (`GET /v1/models`, `GET /v2/models/{name}`, the
/// OpenAPI document).
#[derive(Debug, Clone)]
pub struct Description {
    /// What its inputs hold.
    pub input: InputKind,
    /// The `/v1` parameters it takes, each with a description.
    pub parameters: serde_json::Value,
    /// The JSON Schema of its `/v1` `parameters`, and whether they are required.
    pub parameters_schema: (serde_json::Value, bool),
    /// Kind-specific details (a classifier's sample rate, window, labels; a translation model's
    /// languages).
    pub details: serde_json::Value,
    /// The language codes of a translation model.
    pub languages: Option<Vec<String>>,
    /// A classifier's labels, named in its answers.
    pub labels: Option<Vec<String>>,
    /// Its platform name over the Open Inference Protocol.
    pub platform: &'static str,
    /// Its output tensors over the Open Inference Protocol.
    pub v2_outputs: Vec<TensorInfo>,
    /// Its parameters over the Open Inference Protocol.
    pub v2_parameters: serde_json::Value,
}

/// A batch of one kind's work: what the server's batcher and in-process callers run.
pub trait Batch: Send + Sync + 'static {
    /// What items must share to run in one batch (target language, decoding settings).
    type Key: Clone + Eq + Send + Debug + 'static;
    /// One prepared item (for translation: the encoded source tokens).
    type Item: Send + 'static;
    /// The model's result for one item.
    type Done: Send + 'static;

    /// Runs one batch; returns one result per item, in order (an item that fails alone gets its
    /// own error), or one error for the whole batch.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        key: &Self::Key,
        items: Vec<Self::Item>,
    ) -> Result<Vec<Result<Self::Done, ModelError>>, ModelError>;

    /// Work units produced by one result (generated tokens), counted in the metrics.
    fn units(&self, _done: &Self::Done) -> usize {
        0
    }
}

/// One item of work cut from an input, with where its result goes.
pub struct Work<S: ModelService + ?Sized> {
    /// What it shares with the items it may be batched with.
    pub key: S::Key,
    /// The item.
    pub item: S::Item,
    /// Its padding cost (its token count): a batch costs `longest × items`.
    pub cost: usize,
    /// Where its result goes in its input's output.
    pub tag: S::Tag,
}

/// A model kind's service: see the module documentation.
pub trait ModelService: Batch {
    /// Request parameters, read and checked.
    type Params: Send + Sync + 'static;
    /// Where an item's result goes in its input's output (a classifier's window times).
    type Tag: Send + 'static;

    /// The kind's name.
    fn kind(&self) -> &'static str;

    /// What the kind says about itself.
    fn describe(&self) -> Description;

    /// Reads and checks a request's parameters (named in `spelling` in messages).
    fn parameters(
        &self,
        given: &Parameters,
        spelling: Spelling,
    ) -> Result<Self::Params, ServiceError>;

    /// Whether an input's items are run as they are cut (a long recording, in bounded memory)
    /// rather than admitted with the rest of the request as a whole.
    fn streams(&self) -> bool;

    /// Cuts input `index` into work, handing each item to `emit` as soon as it is ready, and
    /// returns the input's output before any result is folded into it.
    fn prepare(
        &self,
        params: &Self::Params,
        index: usize,
        content: Content,
        emit: &mut dyn FnMut(Work<Self>) -> Result<(), ServiceError>,
    ) -> Result<InferOutput, ServiceError>;

    /// Adds one item's result to its input's output.
    fn fold(&self, output: &mut InferOutput, tag: Self::Tag, done: Self::Done);

    /// Runs one small input so the first request does not pay for page faults.
    fn warm_up(&self) -> Result<(), ModelError>;

    /// The Open Inference Protocol's input tensors, given the input sources a server takes
    /// besides inline data (`path`, `url`).
    fn v2_inputs(&self, sources: &[&str]) -> Vec<TensorInfo>;

    /// A v2 request's one input tensor as `/v1` inputs, with its parameters as `/v1` ones.
    fn v2_request(
        &self,
        input: &str,
        elements: Vec<Vec<u8>>,
        parameters: Parameters,
    ) -> Result<(Vec<InferInput>, Parameters), ServiceError>;

    /// Outputs as the protocol's tensors, for an input tensor of `shape`.
    fn v2_outputs(&self, shape: &[i64], outputs: Vec<InferOutput>) -> Vec<NamedTensor>;
}

/// A v2 input tensor's elements as `/v1` inputs, each numbered by its position; `set` puts
/// element `i` where the kind reads it.
fn tensor_inputs(
    elements: Vec<Vec<u8>>,
    mut set: impl FnMut(&mut InferInput, usize, Vec<u8>) -> Result<(), ServiceError>,
) -> Result<Vec<InferInput>, ServiceError> {
    elements
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let mut one = InferInput {
                id: i.to_string(),
                ..InferInput::default()
            };
            set(&mut one, i, bytes)?;
            Ok(one)
        })
        .collect()
}

/// Element `i` of the v2 input tensor `input`, which must be UTF-8.
fn element_text(input: &str, i: usize, bytes: Vec<u8>) -> Result<String, ServiceError> {
    String::from_utf8(bytes)
        .map_err(|_| ServiceError::InvalidRequest(format!("{input} element {i} is not UTF-8")))
}

/// Why a request to a model service got no result.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request whose structure the kind cannot take (a tensor it does not have).
    #[error("{0}")]
    InvalidRequest(String),
    /// Parameters the kind cannot take: unknown, missing or of the wrong type.
    #[error("{0}")]
    InvalidParameters(String),
    /// A decoding setting out of its range.
    #[error(
        "{field} is {value}; it must be {}",
        if *max == usize::MAX { "at least 1".to_owned() } else { format!("between 1 and {max}") }
    )]
    ParameterOutOfRange {
        /// The setting as the caller spelled it.
        field: String,
        /// What was sent.
        value: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// A language code the model does not know.
    #[error(
        "unknown language code {code:?}{}{}; the valid codes are: {}",
        field.as_ref().map(|f| format!(" in {f}")).unwrap_or_default(),
        suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default(),
        valid.join(", ")
    )]
    UnknownLanguage {
        /// The setting as the caller spelled it, when it has a name.
        field: Option<String>,
        /// The code sent.
        code: String,
        /// The closest valid code, when one is close.
        suggestion: Option<String>,
        /// Every valid code.
        valid: Vec<String>,
    },
    /// A text over the token limit.
    #[error("a text of {tokens} tokens is over the limit of {max} tokens: split it")]
    TextTooLong {
        /// The input's position.
        index: usize,
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// One input the model cannot take.
    #[error("{problem}")]
    Input {
        /// The input's position.
        index: usize,
        /// What is wrong with it.
        problem: InputProblem,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Whoever waited for the work stopped waiting.
    #[error("the request ended")]
    Cancelled,
}

/// What is wrong with one input, as the model sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InputProblem {
    /// Bytes for a text model that are not UTF-8.
    #[error("the translation model takes UTF-8 text; this input is not")]
    NotUtf8,
    /// A kind of input the model does not take.
    #[error("{0}")]
    WrongKind(&'static str),
    /// Audio that cannot be decoded.
    #[error("{0}")]
    InvalidAudio(String),
}

impl ServiceError {
    /// Whether trying again cannot help (everything but a model failure that may pass).
    pub fn is_permanent(&self) -> bool {
        match self {
            ServiceError::Model(e) => e.is_permanent(),
            ServiceError::Cancelled => false,
            _ => true,
        }
    }
}

/// Runs every input of one request through `service` in this thread, in batches of at most
/// `max_items` items (by key, shortest first), folding the results into one output per input:
/// how in-process callers use a service without a batcher. `folded` is called on an input's
/// output each time results were added to it (a caller may move a long output's windows out of
/// memory there). An input that cannot be prepared fails alone (`Err` in its place); a batch
/// that fails as a whole fails the call.
pub fn run_inline<S: ModelService>(
    service: &S,
    params: &S::Params,
    inputs: Vec<Content>,
    max_items: usize,
    folded: impl FnMut(usize, &mut InferOutput) -> Result<(), ServiceError>,
) -> Result<Vec<Result<InferOutput, ServiceError>>, ServiceError> {
    let mut run = Inline {
        service,
        outputs: Vec::with_capacity(inputs.len()),
        pending: Vec::new(),
        max_items: max_items.max(1),
        folded,
        failed: None,
    };
    let streams = service.streams();
    for (index, content) in inputs.into_iter().enumerate() {
        run.outputs.push(Ok(InferOutput::default()));
        let mut cut: Vec<Work<S>> = Vec::new();
        let prepared = service.prepare(params, index, content, &mut |work| {
            cut.push(work);
            if streams && run.pending.len() + cut.len() >= run.max_items {
                // A long input is scored as it is cut, with the batch's other waiting items.
                run.pending.extend(cut.drain(..).map(|w| (index, w)));
                run.flush();
                if run.failed.is_some() {
                    return Err(ServiceError::Cancelled);
                }
            }
            Ok(())
        });
        if let Some(e) = run.failed.take() {
            return Err(e);
        }
        match prepared {
            Ok(output) => {
                // Results of this input's earlier items are already in its placeholder.
                if let Ok(out) = &mut run.outputs[index] {
                    fill(out, output);
                }
                run.pending.extend(cut.into_iter().map(|w| (index, w)));
            }
            Err(e) => {
                run.pending.retain(|(i, _)| *i != index);
                run.outputs[index] = Err(e);
            }
        }
    }
    run.flush();
    match run.failed {
        Some(e) => Err(e),
        None => Ok(run.outputs),
    }
}

/// The state of [`run_inline`].
struct Inline<'s, S: ModelService, F> {
    service: &'s S,
    outputs: Vec<Result<InferOutput, ServiceError>>,
    /// Work cut and not yet run, with the input it belongs to.
    pending: Vec<(usize, Work<S>)>,
    max_items: usize,
    folded: F,
    /// A batch that failed as a whole.
    failed: Option<ServiceError>,
}

impl<S, F> Inline<'_, S, F>
where
    S: ModelService,
    F: FnMut(usize, &mut InferOutput) -> Result<(), ServiceError>,
{
    /// Runs the pending work in batches by key, shortest first, `max_items` at a time, folding
    /// each result into its input's output (an item's own failure fails its input).
    /// Sorting is stable, so items of equal cost keep the order they were cut in.
    fn flush(&mut self) {
        let mut work = std::mem::take(&mut self.pending);
        work.sort_by_key(|(_, w)| w.cost);
        let mut touched = Vec::new();
        while !work.is_empty() && self.failed.is_none() {
            let key = work[0].1.key.clone();
            let (same, rest): (Vec<_>, Vec<_>) = work.into_iter().partition(|(_, w)| w.key == key);
            work = rest;
            let mut same = same.into_iter().peekable();
            while same.peek().is_some() {
                let (mut owners, mut items) = (Vec::new(), Vec::new());
                for (i, w) in same.by_ref().take(self.max_items) {
                    owners.push((i, w.tag));
                    items.push(w.item);
                }
                let results = match self.service.run(&key, items) {
                    Ok(r) => r,
                    Err(e) => {
                        self.failed = Some(e.into());
                        return;
                    }
                };
                for ((i, tag), done) in owners.into_iter().zip(results) {
                    let failed = match (&mut self.outputs[i], done) {
                        (Ok(out), Ok(done)) => {
                            self.service.fold(out, tag, done);
                            None
                        }
                        (Ok(_), Err(e)) => Some(e),
                        (Err(_), _) => None,
                    };
                    if let Some(e) = failed {
                        self.outputs[i] = Err(e.into());
                    }
                    touched.push(i);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for i in touched {
            if let Ok(out) = &mut self.outputs[i] {
                if let Err(e) = (self.folded)(i, out) {
                    self.outputs[i] = Err(e);
                }
            }
        }
    }
}

/// Completes an input's output with what its preparation gave (a duration, an empty text),
/// keeping what results already put there: results of a streamed input can arrive before its
/// preparation ends.
pub fn fill(out: &mut InferOutput, prepared: InferOutput) {
    if out.text.is_none() {
        out.text = prepared.text;
    }
    if out.duration.is_none() {
        out.duration = prepared.duration;
    }
    if out.windows.is_none() {
        out.windows = prepared.windows;
    }
}
