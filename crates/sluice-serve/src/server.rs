//! The HTTP server: routes, model loading behind readiness, admission, and graceful shutdown.
//!
//! The port is bound before the model loads, so orchestrators see a live process (`/healthz`)
//! that is not yet ready (`/readyz` 503) while weights load and warm up; translation requests in
//! that window get 503 with `Retry-After` rather than a refused connection.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use sluice_models::classifier::AudioClassifier;
use sluice_models::source::HubSettings;
use sluice_models::{ModelSource, M2M100};
use tokio::sync::{mpsc, oneshot, watch};
use utoipa::OpenApi;

use crate::api::{
    parse_json, ErrorBody, Payload, RecordIn, RecordOut, Status, TranslationRequest,
    TranslationResponse,
};
use crate::batcher::{self, Backend, BatchConfig, Entry, EntryError, Queue};
use crate::classify::Classify;
use crate::error::{ApiError, InputProblem};
use crate::infer::{
    bad_input, Content, InferInput, InferOutput, InferRequest, InferResponse, InputAccess,
    ModelInfo,
};
use crate::translation::{Limits, Translator};

/// The name of the translation model when `--model` gives no name.
pub const TRANSLATION_MODEL: &str = "m2m100";

/// What a served model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// M2M100 translation (a Hugging Face directory or hub id).
    Translation,
    /// An ONNX audio classifier (a directory with `sluice-model.toml`).
    AudioClassifier,
}

impl ModelKind {
    /// The name used in `GET /v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Translation => "translation",
            Self::AudioClassifier => sluice_models::classifier::KIND,
        }
    }
}

/// One model to serve: its name in `/v1/models/{name}` and where it is loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The name in URLs and metric labels.
    pub name: String,
    /// A directory or hub id.
    pub source: String,
    /// What it is, told by the directory's contents (a hub id is presumed a translation model
    /// until its files show otherwise at load).
    pub kind: ModelKind,
}

impl ModelEntry {
    /// Parses `name=<dir|hub-id>`, or a bare `<dir|hub-id>`: a classifier directory is then named
    /// after the directory and a translation model `m2m100`.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (name, source) = match arg.split_once('=') {
            Some((n, s)) => (Some(n.trim()), s.trim()),
            None => (None, arg.trim()),
        };
        if source.is_empty() {
            return Err(format!(
                "--model {arg:?}: no directory or hub id after the name"
            ));
        }
        let dir = std::path::Path::new(source);
        let kind = if AudioClassifier::is_classifier_dir(dir) {
            ModelKind::AudioClassifier
        } else {
            ModelKind::Translation
        };
        let name = match name {
            Some(n) => n.to_owned(),
            None if kind == ModelKind::AudioClassifier => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "classifier".to_owned()),
            None => TRANSLATION_MODEL.to_owned(),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!(
                "--model {arg:?}: the name {name:?} must be letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(Self {
            name,
            source: source.to_owned(),
            kind,
        })
    }
}

/// Header that sets a per-request deadline in milliseconds (504 once it passes).
pub const DEADLINE_HEADER: &str = "x-sluice-deadline-ms";

/// Everything `sluice serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The models, each with its own queue and batcher; `/translation` uses the first
    /// translation model.
    pub models: Vec<ModelEntry>,
    /// Batching and queue capacity (translation: records; classifiers: see `window_capacity`).
    pub batch: BatchConfig,
    /// Audio windows a classifier's queue holds at most.
    pub window_capacity: NonZeroUsize,
    /// The volume `path` inputs are confined to; without it path inputs are refused.
    pub data_root: Option<std::path::PathBuf>,
    /// URL prefixes `url` inputs may name; empty refuses url inputs.
    pub allow_urls: Vec<String>,
    /// Largest file read for one `path` or `url` input, in bytes.
    pub max_input_bytes: u64,
    /// Object-store options for `url` inputs (endpoint, credentials), on top of the
    /// `AWS_*`, `GOOGLE_*` and `AZURE_*` environment variables.
    pub storage_options: Vec<(String, String)>,
    /// Request bounds.
    pub limits: Limits,
    /// Deadline applied to requests that set none.
    pub deadline: Option<Duration>,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_timeout: Duration,
    /// Seconds a refused client is told to wait (`Retry-After`).
    pub retry_after: u64,
    /// Where translation models run: see [`sluice_models::device::select`].
    pub device: String,
    /// How translation models compute (int8 on the CPU by default).
    pub compute_type: sluice_models::m2m100::ComputeType,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            models: vec![ModelEntry {
                name: TRANSLATION_MODEL.to_owned(),
                source: sluice_models::source::DEFAULT_MODEL.to_owned(),
                kind: ModelKind::Translation,
            }],
            batch: BatchConfig::default(),
            window_capacity: NonZeroUsize::new(4096).expect("non-zero"),
            data_root: None,
            allow_urls: Vec::new(),
            max_input_bytes: 512 << 20,
            storage_options: Vec::new(),
            limits: Limits::default(),
            deadline: None,
            shutdown_timeout: Duration::from_secs(30),
            retry_after: 1,
            device: "auto".into(),
            compute_type: sluice_models::m2m100::ComputeType::Auto,
        }
    }
}

/// A loaded model and its queue.
enum Loaded {
    Translation {
        translator: Arc<Translator>,
        queue: Arc<Queue<Translator>>,
    },
    Classifier {
        classify: Arc<Classify>,
        queue: Arc<Queue<Classify>>,
    },
}

impl Loaded {
    fn depth_capacity(&self) -> (usize, usize) {
        match self {
            Self::Translation { queue, .. } => (queue.depth(), queue.capacity()),
            Self::Classifier { queue, .. } => (queue.depth(), queue.capacity()),
        }
    }
}

/// One served model: set once loaded and warm.
struct Slot {
    entry: ModelEntry,
    loaded: OnceLock<Loaded>,
}

impl Slot {
    /// What the model is: as loaded, or as its source suggests until then.
    fn kind(&self) -> ModelKind {
        match self.loaded.get() {
            Some(Loaded::Translation { .. }) => ModelKind::Translation,
            Some(Loaded::Classifier { .. }) => ModelKind::AudioClassifier,
            None => self.entry.kind,
        }
    }
}

/// State shared by the handlers.
struct App {
    config: ServeConfig,
    slots: Vec<Slot>,
    inputs: InputAccess,
    /// Set when shutdown starts: readiness fails so balancers stop sending.
    draining: AtomicBool,
    /// The batcher tasks, awaited at shutdown after the queues are closed.
    batchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl App {
    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.entry.name == name)
    }

    fn translation_slot(&self) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.kind() == ModelKind::Translation)
    }

    fn translator_languages(&self) -> Option<&'static [&'static str]> {
        match self.translation_slot()?.loaded.get()? {
            Loaded::Translation { translator, .. } => {
                Some(translator.model().tokenizer().languages())
            }
            Loaded::Classifier { .. } => None,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Sluice model server"),
    paths(
        translation,
        infer,
        list_models,
        healthz,
        readyz,
        metrics_route,
        openapi_route
    ),
    components(schemas(
        InferRequest,
        InferInput,
        InferResponse,
        InferOutput,
        crate::infer::WindowScores,
        ModelInfo,
        TranslationRequest,
        Payload,
        RecordIn,
        TranslationResponse,
        RecordOut,
        ErrorBody,
        Status
    ))
)]
struct ApiDoc;

/// The OpenAPI document, with the model's language codes when a model is given.
pub fn openapi(languages: Option<&[&str]>) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if let (Some(langs), Some(components)) = (languages, doc.components.as_mut()) {
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(obj))) =
            components.schemas.get_mut("Payload")
        {
            for field in ["fromLang", "toLang"] {
                if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(p))) =
                    obj.properties.get_mut(field)
                {
                    p.enum_values = Some(langs.iter().map(|l| serde_json::json!(l)).collect());
                }
            }
        }
    }
    doc
}

/// Serves until `shutdown` completes, then drains: stops accepting, answers what is queued and in
/// flight, and returns. Fails if the model cannot be loaded.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::metrics::install();
    let addr = listener.local_addr()?;
    if config.models.is_empty() {
        anyhow::bail!("no model to serve: give at least one --model");
    }
    for (i, m) in config.models.iter().enumerate() {
        if config.models[..i].iter().any(|o| o.name == m.name) {
            anyhow::bail!(
                "two models are named {:?}; name them apart with --model NAME=SOURCE",
                m.name
            );
        }
    }
    let data_root = match &config.data_root {
        Some(d) => Some(
            sluice_core::confine::DataRoot::open(d)
                .with_context(|| format!("--data-root {}", d.display()))?,
        ),
        None => None,
    };
    let app = Arc::new(App {
        slots: config
            .models
            .iter()
            .map(|entry| Slot {
                entry: entry.clone(),
                loaded: OnceLock::new(),
            })
            .collect(),
        inputs: InputAccess {
            data_root,
            url_prefixes: config.allow_urls.clone(),
            max_input_bytes: config.max_input_bytes,
            storage_options: config.storage_options.clone(),
        },
        config,
        draining: AtomicBool::new(false),
        batchers: Mutex::new(Vec::new()),
    });
    let (load_failed_tx, mut load_failed) = mpsc::channel::<anyhow::Error>(app.slots.len());
    let loaders: Vec<_> = (0..app.slots.len())
        .map(|i| tokio::spawn(load(app.clone(), i, load_failed_tx.clone())))
        .collect();
    drop(load_failed_tx);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let router = router(app.clone());
    let listener = listener.tap_io(|tcp| {
        // Small JSON answers must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let mut server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(addr = %addr, "listening");

    let mut failure = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested: draining"),
        Some(e) = load_failed.recv() => failure = Some(e),
        r = &mut server => {
            r.context("server task")?.context("serving")?;
            anyhow::bail!("the server stopped on its own");
        }
    }
    app.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let drained = match tokio::time::timeout(app.config.shutdown_timeout, &mut server).await {
        Ok(r) => {
            r.context("server task")?.context("serving")?;
            true
        }
        Err(_) => {
            tracing::warn!(
                seconds = app.config.shutdown_timeout.as_secs_f64(),
                "in-flight requests did not finish in time; abandoning them"
            );
            server.abort();
            false
        }
    };
    for l in loaders {
        l.abort();
    }
    let batchers = std::mem::take(&mut *app.batchers.lock().unwrap_or_else(|e| e.into_inner()));
    // Dropping the last handle on the queues lets the batchers finish what they hold and exit.
    drop(app);
    for b in batchers {
        // Connections still open after the timeout keep a queue alive; do not wait for them.
        if drained {
            let _ = b.await;
        } else {
            b.abort();
        }
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn load(app: Arc<App>, index: usize, failed: mpsc::Sender<anyhow::Error>) {
    let entry = app.slots[index].entry.clone();
    let device = app.config.device.clone();
    let compute = app.config.compute_type;
    let started = Instant::now();
    let name = entry.name.clone();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Model> {
        let source = ModelSource::parse(&entry.source);
        let context = || format!("loading model {} ({source})", entry.name);
        // A hub repo's kind is known once its files are here: a sluice-model.toml makes it a
        // classifier.
        let dir = source
            .resolve(&HubSettings::from_env())
            .with_context(context)?;
        if AudioClassifier::is_classifier_dir(&dir) {
            let classifier = AudioClassifier::load(&dir).with_context(context)?;
            return Ok(Model::Classifier(classifier));
        }
        let device = sluice_models::device::select(&device).map_err(anyhow::Error::msg)?;
        let model = M2M100::load(&dir, &device, compute).with_context(context)?;
        let translator = Translator::new(Arc::new(model));
        translator.warm_up().context("warming up the model")?;
        Ok(Model::Translation(translator))
    })
    .await;
    let model = match loaded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let _ = failed.send(e).await;
            return;
        }
        Err(e) => {
            let _ = failed
                .send(anyhow::anyhow!("model loading task failed: {e}"))
                .await;
            return;
        }
    };
    let kind = match &model {
        Model::Translation(_) => ModelKind::Translation,
        Model::Classifier(_) => ModelKind::AudioClassifier,
    };
    let (loaded, finished) = match model {
        Model::Translation(t) => {
            let translator = Arc::new(t);
            let running = batcher::start(translator.clone(), app.config.batch.clone(), &name);
            let loaded = Loaded::Translation {
                translator,
                queue: running.queue,
            };
            (loaded, running.finished)
        }
        Model::Classifier(c) => {
            let classify = Arc::new(Classify::new(Arc::new(c)));
            // A window costs one unit: the batch size alone bounds a batch.
            let config = BatchConfig {
                max_tokens: usize::MAX,
                queue_capacity: app.config.window_capacity,
                ..app.config.batch.clone()
            };
            let running = batcher::start(classify.clone(), config, &name);
            let loaded = Loaded::Classifier {
                classify,
                queue: running.queue,
            };
            (loaded, running.finished)
        }
    };
    app.batchers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(finished);
    let _ = app.slots[index].loaded.set(loaded);
    tracing::info!(
        model = %name,
        kind = kind.as_str(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up"
    );
    if app.slots.iter().all(|s| s.loaded.get().is_some()) {
        tracing::info!("every model is loaded: ready");
    }
}

/// A model loaded on a blocking thread, before its batcher starts.
enum Model {
    Translation(Translator),
    Classifier(AudioClassifier),
}

fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_body_bytes;
    Router::new()
        .route("/translation", post(translation))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}/infer", post(infer))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_route))
        .route("/openapi.json", get(openapi_route))
        .route_layer(middleware::from_fn(track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Counts requests by route and status and times them.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::counter!(
        "sluice_http_requests_total",
        "route" => route.clone(),
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("sluice_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Translate records from one language to another.
#[utoipa::path(
    post,
    path = "/translation",
    request_body = TranslationRequest,
    params(("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes")),
    responses(
        (status = 200, description = "One result per record, in request order", body = TranslationResponse),
        (status = 400, description = "Malformed JSON or missing fields", body = ErrorBody),
        (status = 413, description = "Body too large or too many records", body = ErrorBody),
        (status = 422, description = "Unknown language, text too long or setting out of range", body = ErrorBody),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody),
    )
)]
async fn translation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TranslationResponse>, ApiError> {
    let body = body.map_err(|r| body_error(&app, r))?;
    let received = Instant::now();
    let deadline = deadline(&headers, app.config.deadline)?.map(|d| received + d);
    let request: TranslationRequest = parse_json(&body)?;
    let payload = request.payload;
    check_count(&app, payload.records.len(), "records")?;
    let Some(slot) = app.translation_slot() else {
        return Err(ApiError::NoTranslationModel);
    };
    let (translator, queue) = match loaded(&app, slot)? {
        Loaded::Translation { translator, queue } => (translator, queue),
        Loaded::Classifier { .. } => unreachable!("the translation slot holds a translator"),
    };
    let result = translate(&app, translator, queue, payload, deadline).await?;
    Ok(Json(TranslationResponse { result }))
}

fn body_error(app: &App, r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge {
            limit: app.config.limits.max_body_bytes,
        }
    } else {
        ApiError::InvalidBody(r.body_text())
    }
}

fn check_count(app: &App, count: usize, what: &'static str) -> Result<(), ApiError> {
    let max = app.config.limits.max_records;
    if count > max {
        return Err(ApiError::TooManyItems { count, what, max });
    }
    Ok(())
}

/// The slot's model once loaded, or the 503 that tells the client to come back.
fn loaded<'a>(app: &App, slot: &'a Slot) -> Result<&'a Loaded, ApiError> {
    if app.draining.load(Ordering::SeqCst) {
        return Err(shutting_down(app));
    }
    slot.loaded.get().ok_or_else(|| ApiError::ModelLoading {
        name: slot.entry.name.clone(),
        retry_after: app.config.retry_after,
    })
}

fn overloaded(app: &App, refused: batcher::Refused) -> ApiError {
    ApiError::Overloaded {
        reason: refused.to_string(),
        retry_after: app.config.retry_after,
    }
}

fn shutting_down(app: &App) -> ApiError {
    ApiError::ShuttingDown {
        retry_after: app.config.retry_after,
    }
}

/// Queues the records of one request on the translation batcher and awaits them all.
async fn translate(
    app: &App,
    translator: &Arc<Translator>,
    queue: &Arc<Queue<Translator>>,
    payload: crate::api::Payload,
    deadline: Option<Instant>,
) -> Result<Vec<RecordOut>, ApiError> {
    if payload.records.is_empty() {
        return Ok(Vec::new());
    }
    // Tokenizing hundreds of records is real work: keep it off the async threads.
    let translator = translator.clone();
    let limits = app.config.limits.clone();
    let prepared = tokio::task::spawn_blocking(move || translator.prepare(&limits, payload))
        .await
        .map_err(ApiError::internal)??;
    // Empty texts are answered without the model.
    let queued: Vec<bool> = prepared.items.iter().map(Option::is_some).collect();
    let items = prepared
        .items
        .into_iter()
        .flatten()
        .map(|tokens| {
            let cost = tokens.len();
            (tokens, cost)
        })
        .collect();
    let mut answers = submit(app, queue, prepared.key, items, deadline)
        .await?
        .into_iter();
    let mut result = Vec::with_capacity(prepared.ids.len());
    for (id, queued) in prepared.ids.into_iter().zip(queued) {
        let text = if queued {
            let answer = answers.next().expect("one answer per queued record");
            answer.map_err(item_error)?.text
        } else {
            String::new()
        };
        result.push(RecordOut { id, text });
    }
    Ok(result)
}

/// One request's items through a model's queue, the same way for every route: admitted as a
/// whole or refused with 503 + Retry-After, enqueued together (where they join other requests'
/// items in batches), and awaited until each has its answer or the request's deadline passes.
/// Items are `(input, padding cost)`; answers come back in the same order.
async fn submit<B: Backend>(
    app: &App,
    queue: &Queue<B>,
    key: B::Key,
    items: Vec<(B::Input, usize)>,
    deadline: Option<Instant>,
) -> Result<Vec<batcher::Reply<B>>, ApiError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut seats = queue
        .admit(items.len(), remaining)
        .map_err(|r| overloaded(app, r))?;
    let now = Instant::now();
    let mut entries = Vec::with_capacity(items.len());
    let mut replies = Vec::with_capacity(items.len());
    for (input, cost) in items {
        let (reply, rx) = oneshot::channel();
        let permit = seats
            .as_mut()
            .and_then(|s| s.split(1))
            .expect("one seat was admitted per item");
        entries.push(Entry {
            cost,
            input,
            key: key.clone(),
            reply,
            queued_at: now,
            deadline,
            permit,
        });
        replies.push(rx);
    }
    if !queue.push(entries) {
        return Err(shutting_down(app));
    }
    let answers = futures::future::join_all(replies.into_iter().map(|rx| async move {
        rx.await
            .unwrap_or_else(|_| Err(EntryError::Model("the batch was abandoned".to_owned())))
    }));
    with_deadline(deadline, answers).await
}

async fn with_deadline<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = T>,
) -> Result<T, ApiError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut)
            .await
            .map_err(|_| ApiError::DeadlineExceeded),
        None => Ok(fut.await),
    }
}

fn item_error(e: EntryError) -> ApiError {
    match e {
        EntryError::DeadlineExceeded => ApiError::DeadlineExceeded,
        EntryError::Model(m) => ApiError::Model(m),
    }
}

/// Parameters of the translation model on `/v1/models/{name}/infer`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TranslationParameters {
    from_lang: String,
    to_lang: String,
    #[serde(default)]
    beams: Option<usize>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
}

/// Run a model on inline data or on files from the data volume or object storage.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/infer",
    request_body = InferRequest,
    params(
        ("name" = String, Path, description = "A model listed by GET /v1/models"),
        ("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes"),
    ),
    responses(
        (status = 200, description = "One output per input, in input order", body = InferResponse),
        (status = 400, description = "Malformed JSON, an input with not exactly one source, a malformed path", body = ErrorBody),
        (status = 403, description = "A path resolving outside the data root, a URL outside the allowed prefixes", body = ErrorBody),
        (status = 404, description = "Unknown model, or an input file that does not exist", body = ErrorBody),
        (status = 413, description = "Body, input file or window count too large", body = ErrorBody),
        (status = 422, description = "Undecodable audio, unknown language, text that is not UTF-8", body = ErrorBody),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody),
    )
)]
async fn infer(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    let body = body.map_err(|r| body_error(&app, r))?;
    let received = Instant::now();
    let deadline = deadline(&headers, app.config.deadline)?.map(|d| received + d);
    let Some(slot) = app.slot(&name) else {
        return Err(ApiError::UnknownModel {
            name,
            served: app.slots.iter().map(|s| s.entry.name.clone()).collect(),
        });
    };
    let request: InferRequest = parse_json(&body)?;
    check_count(&app, request.inputs.len(), "inputs")?;
    app.inputs.check(&request.inputs)?;
    let (outputs, labels) = match loaded(&app, slot)? {
        Loaded::Translation { translator, queue } => {
            let params: TranslationParameters =
                serde_json::from_value(serde_json::Value::Object(request.parameters))
                    .map_err(|e| ApiError::InvalidParameters(format!("parameters: {e}")))?;
            let inputs = request.inputs;
            let ids: Vec<String> = inputs.iter().map(|i| i.id.clone()).collect();
            let app2 = app.clone();
            let texts = blocking(move || {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| match app2.inputs.read(i, input)? {
                        Content::Text(t) => Ok(t),
                        Content::Bytes { bytes, .. } => String::from_utf8(bytes)
                            .map_err(|_| bad_input(i, input, InputProblem::NotUtf8)),
                    })
                    .collect::<Result<Vec<String>, ApiError>>()
            })
            .await?;
            let payload = crate::api::Payload {
                from_lang: params.from_lang,
                to_lang: params.to_lang,
                records: ids
                    .into_iter()
                    .zip(texts)
                    .map(|(id, text)| RecordIn { id, text })
                    .collect(),
                beams: params.beams,
                max_new_tokens: params.max_new_tokens,
            };
            let outputs = translate(&app, translator, queue, payload, deadline)
                .await?
                .into_iter()
                .map(|r| InferOutput {
                    id: r.id,
                    text: Some(r.text),
                    ..InferOutput::default()
                })
                .collect();
            (outputs, None)
        }
        Loaded::Classifier { classify, queue } => {
            if !request.parameters.is_empty() {
                return Err(ApiError::InvalidParameters(format!(
                    "model {name:?} (an audio classifier) takes no parameters"
                )));
            }
            let outputs = classify_inputs(&app, classify, queue, request.inputs, deadline).await?;
            (outputs, Some(classify.classifier().spec().labels.clone()))
        }
    };
    Ok(Json(InferResponse {
        model: name,
        labels,
        outputs,
    }))
}

/// Runs blocking work (file reads, decoding) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// Decodes every input, queues all their windows on the classifier's batcher (where they join
/// other requests' windows) and reassembles the scores per input.
async fn classify_inputs(
    app: &Arc<App>,
    classify: &Arc<Classify>,
    queue: &Arc<Queue<Classify>>,
    inputs: Vec<InferInput>,
    deadline: Option<Instant>,
) -> Result<Vec<InferOutput>, ApiError> {
    for (i, input) in inputs.iter().enumerate() {
        if input.text.is_some() {
            return Err(bad_input(
                i,
                input,
                InputProblem::WrongKind(
                    "an audio classifier takes audio as data, path or url, not text",
                ),
            ));
        }
    }
    let (app2, classify2) = (app.clone(), classify.clone());
    let prepared = blocking(move || {
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let Content::Bytes { bytes, name } = app2.inputs.read(i, input)? else {
                    unreachable!("text inputs were refused above")
                };
                let p = crate::classify::prepare(classify2.classifier(), &bytes, name.as_deref())
                    .map_err(|m| bad_input(i, input, InputProblem::InvalidAudio(m)))?;
                Ok((input.id.clone(), p))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    let total: usize = prepared.iter().map(|(_, p)| p.windows.len()).sum();
    if total > queue.capacity() {
        return Err(ApiError::TooManyWindows {
            windows: total,
            capacity: queue.capacity(),
        });
    }
    let mut items = Vec::with_capacity(total);
    let mut pending = Vec::with_capacity(prepared.len());
    for (id, p) in prepared {
        let spans: Vec<(f64, f64)> = p.windows.iter().map(|w| (w.start, w.end)).collect();
        items.extend(p.windows.into_iter().map(|w| (w.samples, 1)));
        pending.push((id, p.duration, spans));
    }
    let mut answers = submit(app, queue, (), items, deadline).await?.into_iter();
    let labels = &classify.classifier().spec().labels;
    let mut outputs = Vec::with_capacity(pending.len());
    for (id, duration, spans) in pending {
        let mut windows = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            let scores = answers
                .next()
                .expect("one answer per window")
                .map_err(item_error)?;
            windows.push(crate::classify::window_scores(labels, start, end, scores));
        }
        outputs.push(InferOutput {
            id,
            duration: Some(duration),
            windows: Some(windows),
            ..InferOutput::default()
        });
    }
    Ok(outputs)
}

/// The models this server serves, with what each takes.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = [ModelInfo])))]
async fn list_models(State(app): State<Arc<App>>) -> Json<Vec<ModelInfo>> {
    let inputs = |kind: ModelKind| {
        let mut v = match kind {
            ModelKind::Translation => vec!["text", "data"],
            ModelKind::AudioClassifier => vec!["data"],
        };
        if app.inputs.data_root.is_some() {
            v.push("path");
        }
        if !app.inputs.url_prefixes.is_empty() {
            v.push("url");
        }
        v.into_iter().map(str::to_owned).collect()
    };
    let infos = app
        .slots
        .iter()
        .map(|slot| {
            let kind = slot.kind();
            let (parameters, input_kind) = match kind {
                ModelKind::Translation => (
                    serde_json::json!({
                        "fromLang": "source language code (required)",
                        "toLang": "target language code (required)",
                        "beams": "beams for beam search, 1 = greedy (optional)",
                        "maxNewTokens": "most generated tokens per input (optional)",
                    }),
                    "text",
                ),
                ModelKind::AudioClassifier => (serde_json::json!({}), "audio"),
            };
            let details = match slot.loaded.get() {
                Some(Loaded::Classifier { classify, .. }) => {
                    serde_json::to_value(classify.classifier().spec()).ok()
                }
                Some(Loaded::Translation { translator, .. }) => Some(serde_json::json!({
                    "languages": translator.model().tokenizer().languages(),
                })),
                None => None,
            };
            ModelInfo {
                name: slot.entry.name.clone(),
                kind: kind.as_str().to_owned(),
                status: if slot.loaded.get().is_some() {
                    "ready"
                } else {
                    "loading"
                }
                .to_owned(),
                source: slot.entry.source.clone(),
                inputs: inputs(kind),
                input_kind: input_kind.to_owned(),
                parameters,
                details,
            }
        })
        .collect();
    Json(infos)
}

fn deadline(headers: &HeaderMap, default: Option<Duration>) -> Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get(DEADLINE_HEADER) else {
        return Ok(default);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::InvalidHeader(format!(
                "{DEADLINE_HEADER} must be a whole number of milliseconds"
            ))
        })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status {
        status: "alive".to_owned(),
        queue_depth: None,
        queue_capacity: None,
    })
}

/// Readiness: the model is loaded and warm, the server is not draining, and the queue has room.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Status), (status = 503, body = Status)))]
async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<Status>) {
    let status = |s: &str, code, q: Option<(usize, usize)>| {
        (
            code,
            Json(Status {
                status: s.to_owned(),
                queue_depth: q.map(|q| q.0),
                queue_capacity: q.map(|q| q.1),
            }),
        )
    };
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    if app.draining.load(Ordering::SeqCst) {
        return status("draining", unavailable, None);
    }
    let loaded: Option<Vec<(usize, usize)>> = app
        .slots
        .iter()
        .map(|s| s.loaded.get().map(Loaded::depth_capacity))
        .collect();
    let Some(queues) = loaded else {
        return status("loading", unavailable, None);
    };
    // Depth and capacity summed over the models; any one full queue makes the replica busy.
    let total = queues
        .iter()
        .fold((0, 0), |(d, c), (qd, qc)| (d + qd, c + qc));
    if queues.iter().any(|(d, c)| d >= c) {
        status("saturated", unavailable, Some(total))
    } else {
        status("ready", StatusCode::OK, Some(total))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics_route() -> Response {
    crate::metrics::response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_route(State(app): State<Arc<App>>) -> Json<utoipa::openapi::OpenApi> {
    let langs = app.translator_languages();
    Json(openapi(langs))
}
