//! The HTTP server: routes, model loading behind readiness, admission, and graceful shutdown.
//!
//! The port is bound before the model loads, so orchestrators see a live process (`/healthz`)
//! that is not yet ready (`/readyz` 503) while weights load and warm up; translation requests in
//! that window get 503 with `Retry-After` rather than a refused connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use sluice_models::source::HubSettings;
use sluice_models::{ModelSource, M2M100};
use tokio::sync::{oneshot, watch};
use utoipa::OpenApi;

use crate::api::{
    parse_json, ApiError, ErrorBody, Payload, RecordIn, RecordOut, Status, TranslationRequest,
    TranslationResponse,
};
use crate::batcher::{self, BatchConfig, Entry, ItemError, Queue};
use crate::translation::{Limits, Translator};

/// The model name used in metric labels and logs.
pub const TRANSLATION_MODEL: &str = "m2m100";

/// Header that sets a per-request deadline in milliseconds (504 once it passes).
pub const DEADLINE_HEADER: &str = "x-sluice-deadline-ms";

/// Everything `sluice serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model directory or hub id.
    pub model: String,
    /// Batching and queue capacity.
    pub batch: BatchConfig,
    /// Request bounds.
    pub limits: Limits,
    /// Deadline applied to requests that set none.
    pub deadline: Option<Duration>,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_timeout: Duration,
    /// Seconds a refused client is told to wait (`Retry-After`).
    pub retry_after: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: sluice_models::source::DEFAULT_MODEL.to_owned(),
            batch: BatchConfig::default(),
            limits: Limits::default(),
            deadline: None,
            shutdown_timeout: Duration::from_secs(30),
            retry_after: 1,
        }
    }
}

/// A loaded model and its queue.
struct Loaded {
    translator: Arc<Translator>,
    queue: Arc<Queue<Translator>>,
}

/// State shared by the handlers.
struct App {
    config: ServeConfig,
    /// Set once the model is loaded and warm.
    loaded: OnceLock<Loaded>,
    /// Set when shutdown starts: readiness fails so balancers stop sending.
    draining: AtomicBool,
    /// The batcher task, awaited at shutdown after the queue is closed.
    batcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Sluice model server"),
    paths(translation, healthz, readyz, metrics_route, openapi_route),
    components(schemas(
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
    let app = Arc::new(App {
        config,
        loaded: OnceLock::new(),
        draining: AtomicBool::new(false),
        batcher: Mutex::new(None),
    });
    let (load_failed_tx, load_failed) = oneshot::channel::<anyhow::Error>();
    let loader = tokio::spawn(load(app.clone(), load_failed_tx));

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
        Ok(e) = load_failed => failure = Some(e),
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
    loader.abort();
    let batcher = app.batcher.lock().unwrap_or_else(|e| e.into_inner()).take();
    // Dropping the last handle on the queue lets the batcher finish what it holds and exit.
    drop(app);
    if let Some(b) = batcher {
        // Connections still open after the timeout keep the queue alive; do not wait for them.
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

async fn load(app: Arc<App>, failed: oneshot::Sender<anyhow::Error>) {
    let source = ModelSource::parse(&app.config.model);
    let started = Instant::now();
    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Translator> {
        let dir = source.resolve(&HubSettings::from_env())?;
        let model = M2M100::load(&dir, &candle_core::Device::Cpu)
            .with_context(|| format!("loading model {source}"))?;
        let translator = Translator::new(Arc::new(model));
        translator.warm_up().context("warming up the model")?;
        Ok(translator)
    })
    .await;
    let translator = match loaded {
        Ok(Ok(t)) => Arc::new(t),
        Ok(Err(e)) => {
            let _ = failed.send(e);
            return;
        }
        Err(e) => {
            let _ = failed.send(anyhow::anyhow!("model loading task failed: {e}"));
            return;
        }
    };
    let running = batcher::start(
        translator.clone(),
        app.config.batch.clone(),
        TRANSLATION_MODEL,
    );
    *app.batcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(running.finished);
    let _ = app.loaded.set(Loaded {
        translator,
        queue: running.queue,
    });
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up: ready"
    );
}

fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_body_bytes;
    Router::new()
        .route("/translation", post(translation))
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
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; GET /openapi.json lists the routes",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route; GET /openapi.json lists the routes",
    )
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
    let limits = &app.config.limits;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than {} bytes; send fewer records per request",
                    limits.max_body_bytes
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", r.body_text())
        }
    })?;
    let received = Instant::now();
    let deadline = deadline(&headers, app.config.deadline)?.map(|d| received + d);
    let request: TranslationRequest = parse_json(&body)?;
    let payload = request.payload;
    if payload.records.len() > limits.max_records {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "{} records in one request; the limit is {}: split the request",
                payload.records.len(),
                limits.max_records
            ),
        ));
    }
    if app.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down; retry on another replica",
            app.config.retry_after,
        ));
    }
    let Some(loaded) = app.loaded.get() else {
        return Err(ApiError::unavailable(
            "model_loading",
            "the model is still loading; retry shortly",
            app.config.retry_after,
        ));
    };
    if payload.records.is_empty() {
        return Ok(Json(TranslationResponse { result: Vec::new() }));
    }
    // Tokenizing hundreds of records is real work: keep it off the async threads.
    let translator = loaded.translator.clone();
    let limits = limits.clone();
    let prepared = tokio::task::spawn_blocking(move || translator.prepare(&limits, payload))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    let queued = prepared.items.iter().flatten().count();
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut seats = loaded.queue.admit(queued, remaining).map_err(|refused| {
        ApiError::unavailable(
            "overloaded",
            format!("{refused}; retry after the Retry-After delay"),
            app.config.retry_after,
        )
    })?;
    let now = Instant::now();
    let mut entries = Vec::with_capacity(queued);
    let mut slots = Vec::with_capacity(prepared.items.len());
    for input in prepared.items {
        let Some(input) = input else {
            slots.push(None);
            continue;
        };
        let (reply, rx) = oneshot::channel();
        let permit = seats
            .as_mut()
            .and_then(|s| s.split(1))
            .expect("one seat was admitted per queued record");
        entries.push(Entry {
            cost: input.len(),
            input,
            key: prepared.key,
            reply,
            queued_at: now,
            deadline,
            permit,
        });
        slots.push(Some(rx));
    }
    if !loaded.queue.push(entries) {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down; retry on another replica",
            app.config.retry_after,
        ));
    }
    let answers = futures::future::join_all(slots.into_iter().map(|slot| async move {
        match slot {
            None => Ok(String::new()),
            Some(rx) => match rx.await {
                Ok(Ok(t)) => Ok(t.text),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ItemError::Model("the batch was abandoned".to_owned())),
            },
        }
    }));
    let answers = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), answers)
            .await
            .map_err(|_| deadline_exceeded())?,
        None => answers.await,
    };
    let mut result = Vec::with_capacity(answers.len());
    for (id, answer) in prepared.ids.into_iter().zip(answers) {
        match answer {
            Ok(text) => result.push(RecordOut { id, text }),
            Err(ItemError::DeadlineExceeded) => return Err(deadline_exceeded()),
            Err(ItemError::Model(m)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "model_error",
                    m,
                ))
            }
        }
    }
    Ok(Json(TranslationResponse { result }))
}

fn deadline_exceeded() -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        "the request's deadline passed before its translations were ready",
    )
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
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("{DEADLINE_HEADER} must be a whole number of milliseconds"),
            )
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
    let status = |s: &str, code, q: Option<&Queue<Translator>>| {
        (
            code,
            Json(Status {
                status: s.to_owned(),
                queue_depth: q.map(|q| q.depth()),
                queue_capacity: q.map(|q| q.capacity()),
            }),
        )
    };
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match app.loaded.get() {
        _ if app.draining.load(Ordering::SeqCst) => status("draining", unavailable, None),
        None => status("loading", unavailable, None),
        Some(l) if l.queue.depth() >= l.queue.capacity() => {
            status("saturated", unavailable, Some(&l.queue))
        }
        Some(l) => status("ready", StatusCode::OK, Some(&l.queue)),
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
    let langs = app
        .loaded
        .get()
        .map(|l| l.translator.model().tokenizer().languages());
    Json(openapi(langs))
}
