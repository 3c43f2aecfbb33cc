//! What every request body passes before a route reads it: a declared body over
//! `--max-body-bytes` is refused with 413 after the rest of it has been read and thrown away (so
//! a client that writes its whole body before reading gets the answer instead of a reset), and
//! the bytes of the requests the server holds at once are bounded by `--max-buffered-bytes`
//! (a request past the bound waits for nothing: 503 with Retry-After). A request is counted as
//! twice its body: the body, and what is decoded from it (texts, base64 data) which is never
//! larger; audio is decoded in windows the queue's capacity bounds.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::App;
use crate::error::ApiError;

/// The most of an oversized body read (and thrown away) to answer its 413: past it the client
/// is cut off, as it was before.
pub const DRAIN_BOUND: u64 = 64 << 20;

/// How long reading an oversized body's rest may take.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Bytes of requests the server may hold at once, shared by every request.
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            limit,
        }
    }
}

/// An error in the shape of the route asked for: the Open Inference Protocol's `{"error": ...}`
/// under `/v2`, Sluice's own elsewhere.
fn answer(path: &str, e: ApiError) -> Response {
    if path.starts_with("/v2/") {
        super::v2::V2Error::from(e).into_response()
    } else {
        e.into_response()
    }
}

/// Answers `req` with `e` without keeping its body: a client that waits for 100-continue sends
/// nothing more once answered; any other is writing the body now, and closing on it would reset
/// the connection before it reads the answer, so the rest (up to [`DRAIN_BOUND`]) is read and
/// thrown away first.
pub(super) async fn refuse(req: Request, e: ApiError) -> Response {
    let path = req.uri().path().to_owned();
    let declared = declared_length(&req);
    let expects = req.headers().contains_key(header::EXPECT);
    if !expects && declared.is_some_and(|n| n <= DRAIN_BOUND) {
        let mut body = req.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(_)) = body.next().await {}
        })
        .await;
    }
    answer(&path, e)
}

/// The body length a request declares.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Applies the body limit and the budget to one request.
pub(super) async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let limit = app.config.limits.max_body_bytes;
    let declared = declared_length(&req);
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(req, ApiError::BodyTooLarge { limit }).await;
    }
    // A chunked body may be as large as the limit allows; a request with neither header has
    // none.
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let size = 2 * match declared {
        Some(n) => n as usize,
        None if chunked => limit,
        None => 0,
    };
    if size == 0 {
        return next.run(req).await;
    }
    let budget = &app.body_budget;
    let held = u32::try_from(size)
        .ok()
        .and_then(|n| budget.bytes.clone().try_acquire_many_owned(n).ok());
    let Some(held) = held else {
        let in_use = budget.limit - budget.bytes.available_permits();
        return refuse(
            req,
            ApiError::Overloaded {
                reason: format!(
                    "the server holds {in_use} bytes of requests and takes at most {} \
                     (--max-buffered-bytes); this request's {size} do not fit now",
                    budget.limit
                ),
                retry_after: app.config.retry_after,
            },
        )
        .await;
    };
    let resp = next.run(req).await;
    drop(held);
    resp
}
