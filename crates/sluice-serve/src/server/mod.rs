//! The HTTP server: routes, model loading behind readiness, admission, and graceful shutdown.
//!
//! The port is bound before the model loads, so orchestrators see a live process (`/healthz`)
//! that is not yet ready (`/readyz` 503) while weights load and warm up; translation requests in
//! that window get 503 with `Retry-After` rather than a refused connection.

mod auth;
pub use auth::{AccessConfig, OpenRoutes, UnknownRouteGroup};
pub use v2::decode_request;
mod guard;
mod openapi;
mod served;
mod submit;
mod translate;
mod v1;
mod v2;

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use sluice_models::service::{self, LoadContext, Model};
use sluice_models::source::{HubSettings, ObjectSettings};
use sluice_models::{with_service, DeviceSpec, ModelSource};
use tokio::sync::{mpsc, watch};
use utoipa::OpenApi;

use crate::api::{
    ErrorBody, Payload, RecordIn, RecordOut, Status, TranslationRequest, TranslationResponse,
};
use crate::batcher::BatchConfig;
use crate::error::ApiError;
use crate::infer::{InferInput, InferOutput, InferRequest, InferResponse, InputAccess, ModelInfo};
use crate::Limits;
use served::Served;

/// The name of the translation model when `--model` gives no name.
pub const TRANSLATION_MODEL: &str = "m2m100";

/// One model to serve: its name in `/v1/models/{name}` and where it is loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The name in URLs and metric labels.
    pub name: String,
    /// A directory or hub id.
    pub source: String,
    /// What it is (`translation`, `audio-classifier`), told by the directory's contents (a hub
    /// id is presumed a translation model until its files show otherwise at load).
    pub kind: &'static str,
}

impl ModelEntry {
    /// Parses `name=<dir|hub-id>`, or a bare `<dir|hub-id>`: a classifier directory is then named
    /// after the directory and a translation model `m2m100`.
    pub fn parse(arg: &str) -> Result<Self, ModelEntryError> {
        let (name, source) = match arg.split_once('=') {
            Some((n, s)) => (Some(n.trim()), s.trim()),
            None => (None, arg.trim()),
        };
        if source.is_empty() {
            return Err(ModelEntryError::NoSource(arg.to_owned()));
        }
        let dir = std::path::Path::new(source);
        // A hub id or a URL is no directory: translation, the kind of any other directory.
        let kind = service::detect(dir).name;
        let name = match name {
            Some(n) => n.to_owned(),
            None if kind == service::translation::KIND_NAME => TRANSLATION_MODEL.to_owned(),
            None => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "classifier".to_owned()),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ModelEntryError::BadName {
                arg: arg.to_owned(),
                name,
            });
        }
        Ok(Self {
            name,
            source: source.to_owned(),
            kind,
        })
    }
}

/// Why a `--model` argument cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelEntryError {
    /// A name with nothing after the `=`.
    #[error("--model {0:?}: no directory or hub id after the name")]
    NoSource(String),
    /// A name that cannot be part of a URL path.
    #[error("--model {arg:?}: the name {name:?} must be letters, digits, '-', '_' or '.'")]
    BadName {
        /// The argument.
        arg: String,
        /// The name it gives.
        name: String,
    },
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
    /// Bytes of requests held at once, each counted as twice its body (see `guard`).
    pub max_buffered_bytes: usize,
    /// API keys, rate limit and CORS (all off by default).
    pub access: auth::AccessConfig,
    /// Deadline applied to requests that set none.
    pub deadline: Option<Duration>,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_timeout: Duration,
    /// Seconds a refused client is told to wait (`Retry-After`).
    pub retry_after: u64,
    /// Where translation models run.
    pub device: DeviceSpec,
    /// How translation models compute (int8 on the CPU by default).
    pub compute_type: sluice_models::m2m100::ComputeType,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            models: vec![ModelEntry {
                name: TRANSLATION_MODEL.to_owned(),
                source: sluice_models::source::DEFAULT_MODEL.to_owned(),
                kind: service::translation::KIND_NAME,
            }],
            batch: BatchConfig::default(),
            window_capacity: NonZeroUsize::new(4096).expect("non-zero"),
            data_root: None,
            allow_urls: Vec::new(),
            max_input_bytes: 512 << 20,
            storage_options: Vec::new(),
            limits: Limits::default(),
            max_buffered_bytes: 256 << 20,
            access: auth::AccessConfig::default(),
            deadline: None,
            shutdown_timeout: Duration::from_secs(30),
            retry_after: 1,
            device: DeviceSpec::Auto,
            compute_type: sluice_models::m2m100::ComputeType::Auto,
        }
    }
}

/// One served model: set once loaded and warm.
struct Slot {
    entry: ModelEntry,
    loaded: OnceLock<Arc<dyn Served>>,
}

impl Slot {
    /// What the model is: as loaded, or as its source suggests until then.
    fn kind(&self) -> &'static str {
        match self.loaded.get() {
            Some(served) => served.kind(),
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
    /// Bytes of requests held now.
    body_budget: guard::BodyBudget,
    /// Who may call, how often.
    access: auth::Access,
}

impl App {
    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.entry.name == name)
    }

    fn translation_slot(&self) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.kind() == service::translation::KIND_NAME)
    }

    fn translator_languages(&self) -> Option<Vec<String>> {
        let served = self.translation_slot()?.loaded.get()?;
        served.description().languages.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Sluice model server"),
    paths(
        translate::translation,
        v1::infer,
        v1::list_models,
        v2::server_metadata,
        v2::live,
        v2::ready,
        v2::model_metadata,
        v2::model_ready,
        v2::infer_v2,
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
        sluice_models::service::WindowScores,
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

/// The OpenAPI document, with the model's language codes when a model is given and this
/// server's bounds on what a request may ask for (`limits`).
pub fn openapi(languages: Option<&[String]>, limits: &Limits) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;
    let mut doc = ApiDoc::openapi();
    let Some(components) = doc.components.as_mut() else {
        return doc;
    };
    if let Some(RefOr::T(Schema::Object(payload))) = components.schemas.get_mut("Payload") {
        for (field, max) in [
            ("beams", limits.max_beams.get()),
            ("maxNewTokens", limits.max_new_tokens.get()),
        ] {
            if let Some(RefOr::T(Schema::Object(p))) = payload.properties.get_mut(field) {
                p.minimum = Some(1.into());
                p.maximum = Some(max.into());
            }
        }
        if let Some(RefOr::T(Schema::Array(records))) = payload.properties.get_mut("records") {
            records.max_items = Some(limits.max_records);
        }
        if let Some(langs) = languages {
            for field in ["fromLang", "toLang"] {
                if let Some(RefOr::T(Schema::Object(p))) = payload.properties.get_mut(field) {
                    p.enum_values = Some(langs.iter().map(|l| serde_json::json!(l)).collect());
                }
            }
        }
    }
    if let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut("InferRequest") {
        if let Some(RefOr::T(Schema::Array(inputs))) = request.properties.get_mut("inputs") {
            inputs.max_items = Some(limits.max_records);
        }
    }
    // The deadline header: whole milliseconds, up to a day.
    for item in doc.paths.paths.values_mut() {
        for op in [item.post.as_mut(), item.get.as_mut()]
            .into_iter()
            .flatten()
        {
            for param in op.parameters.iter_mut().flatten() {
                if param.name == DEADLINE_HEADER {
                    if let Some(RefOr::T(Schema::Object(s))) = param.schema.as_mut() {
                        s.schema_type = SchemaType::Type(Type::Integer);
                        s.minimum = Some(0.into());
                        s.maximum = Some(submit::MAX_DEADLINE_MS.into());
                    }
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
    check(&config)?;
    let cors = auth::cors(&config.access.cors_origins)?;
    let app = Arc::new(App::new(config)?);
    let (load_failed_tx, mut load_failed) = mpsc::channel::<anyhow::Error>(app.slots.len());
    let loaders: Vec<_> = (0..app.slots.len())
        .map(|i| tokio::spawn(load(app.clone(), i, load_failed_tx.clone())))
        .collect();
    drop(load_failed_tx);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let router = router(app.clone(), cors);
    let listener = listener.tap_io(|tcp| {
        // Small JSON answers must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let mut server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
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
    drain(app, server, loaders).await?;
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Refuses a configuration that cannot serve: no model, two models of one name, a buffer that
/// cannot hold one request.
fn check(config: &ServeConfig) -> anyhow::Result<()> {
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
    if config.max_buffered_bytes < 2 * config.limits.max_body_bytes {
        anyhow::bail!(
            "--max-buffered-bytes {} cannot hold one request of --max-body-bytes {} (counted \
             twice: the body and what is decoded from it); give at least {}",
            config.max_buffered_bytes,
            config.limits.max_body_bytes,
            2 * config.limits.max_body_bytes
        );
    }
    Ok(())
}

impl App {
    /// The server's state before any model is loaded.
    fn new(config: ServeConfig) -> anyhow::Result<Self> {
        let data_root = match &config.data_root {
            Some(d) => Some(
                sluice_core::confine::DataRoot::open(d)
                    .with_context(|| format!("--data-root {}", d.display()))?,
            ),
            None => None,
        };
        Ok(App {
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
            body_budget: guard::BodyBudget::new(config.max_buffered_bytes),
            access: auth::Access::new(&config.access)?,
            config,
            draining: AtomicBool::new(false),
            batchers: Mutex::new(Vec::new()),
        })
    }
}

/// Waits for in-flight requests (up to the shutdown timeout), then lets the batchers finish
/// what they hold.
async fn drain(
    app: Arc<App>,
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    loaders: Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Loads and warms slot `index`'s model on a blocking thread, then starts its batcher.
async fn load(app: Arc<App>, index: usize, failed: mpsc::Sender<anyhow::Error>) {
    let entry = app.slots[index].entry.clone();
    let context = LoadContext {
        device: app.config.device,
        compute: app.config.compute_type,
        hub: HubSettings::from_env(),
        objects: ObjectSettings {
            options: app.config.storage_options.clone(),
            ..ObjectSettings::from_env()
        },
        translation: app.config.limits.translation(),
    };
    let started = Instant::now();
    let name = entry.name.clone();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Model> {
        let source = ModelSource::parse(&entry.source);
        let context_line = || format!("loading model {} ({source})", entry.name);
        let model = service::load(&source, &context).with_context(context_line)?;
        with_service!(&model, s => s.warm_up()).context("warming up the model")?;
        Ok(model)
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
    let (batch, windows) = (app.config.batch.clone(), app.config.window_capacity);
    let (served, finished) = with_service!(model, s => served::start(s, batch, windows, &name));
    let kind = served.kind();
    app.batchers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(finished);
    let _ = app.slots[index].loaded.set(served);
    tracing::info!(
        model = %name,
        kind,
        seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up"
    );
    if app.slots.iter().all(|s| s.loaded.get().is_some()) {
        tracing::info!("every model is loaded: ready");
    }
}

fn router(app: Arc<App>, cors: Option<tower_http::cors::CorsLayer>) -> Router {
    let body_limit = app.config.limits.max_body_bytes;
    let router = Router::new()
        .route("/translation", post(translate::translation))
        .route("/v1/models", get(v1::list_models))
        .route("/v1/models/{name}/infer", post(v1::infer))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::model_metadata),
        )
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::model_ready),
        )
        .route("/v2/models/{name}/infer", post(v2::infer_v2))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::infer_v2),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_route))
        .route("/openapi.json", get(openapi_route))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard::guard))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth::guard))
        .route_layer(middleware::from_fn(track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit));
    // Browsers' preflight requests are answered here, before any key is asked for.
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(middleware::from_fn(access)).with_state(app)
}

/// The header that names a request in the access log, echoed back (made up when absent).
const REQUEST_ID_HEADER: &str = "x-request-id";

/// The route a request matched, handed from [`track`] to the access log.
#[derive(Clone)]
struct RouteName(String);

/// Counts requests by route and status and times them.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let mut resp = next.run(req).await;
    metrics::counter!(
        "sluice_http_requests_total",
        "route" => route.clone(),
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("sluice_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    resp.extensions_mut().insert(RouteName(route));
    resp
}

/// One access-log line per request (method, route, status, duration, request id), and the
/// request id echoed in the answer: the caller's `x-request-id` when it is a usable one (1 to 128
/// visible ASCII characters), else a new UUID.
async fn access(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let value = axum::http::HeaderValue::from_str(&id).expect("visible ASCII");
    req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let method = req.method().clone();
    let started = Instant::now();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    let route = resp
        .extensions()
        .get::<RouteName>()
        .map_or("unmatched", |r| r.0.as_str());
    tracing::info!(
        target: "sluice::access",
        method = %method,
        route,
        status = resp.status().as_u16(),
        seconds = started.elapsed().as_secs_f64(),
        request_id = %id,
        "request"
    );
    resp
}

async fn not_found() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
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

/// Readiness: every model is loaded and warm and the server is not draining (a full queue is
/// `saturated`, still 200).
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Status), (status = 503, body = Status)))]
async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, Json<Status>) {
    let (status, code, queues) = readiness(&app);
    (
        code,
        Json(Status {
            status: status.to_owned(),
            queue_depth: queues.map(|q| q.0),
            queue_capacity: queues.map(|q| q.1),
        }),
    )
}

/// Whether the server takes work (`/readyz`, `/v2/health/ready`): its state, the status code
/// that says it, and the queues' depth and capacity summed over the models once all are loaded.
fn readiness(app: &App) -> (&'static str, StatusCode, Option<(usize, usize)>) {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    if app.draining.load(Ordering::SeqCst) {
        return ("draining", unavailable, None);
    }
    let loaded: Option<Vec<(usize, usize)>> = app
        .slots
        .iter()
        .map(|s| s.loaded.get().map(|m| m.depth_capacity()))
        .collect();
    let Some(queues) = loaded else {
        return ("loading", unavailable, None);
    };
    let total = queues
        .iter()
        .fold((0, 0), |(d, c), (qd, qc)| (d + qd, c + qc));
    // A full queue is reported, not made unready: behind a Service every replica would leave the
    // endpoints at once in a burst, and clients would get connection errors instead of a quick
    // 503 with Retry-After. Saturation is in the metrics and in those 503s.
    if queues.iter().any(|(d, c)| d >= c) {
        ("saturated", StatusCode::OK, Some(total))
    } else {
        ("ready", StatusCode::OK, Some(total))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics_route() -> Response {
    crate::metrics::response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_route(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let langs = app.translator_languages();
    let limits = &app.config.limits;
    let mut doc = serde_json::to_value(openapi(langs.as_deref(), limits)).unwrap_or_default();
    let models: Vec<_> = app
        .slots
        .iter()
        .map(|slot| openapi::ModelDoc {
            name: &slot.entry.name,
            description: slot.loaded.get().map(|m| m.description()),
            kind: slot.kind(),
            sources: v1::input_sources(&app, slot),
        })
        .collect();
    openapi::describe_models(&mut doc, &models, limits);
    Json(doc)
}
