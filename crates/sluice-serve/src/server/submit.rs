//! What every route shares between parsing a request and answering it: limits on what one
//! request may hold, the model's readiness, one submission path through a model's queue
//! (admit, enqueue, await, deadline).

use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use sluice_models::service::Batch;
use tokio::sync::oneshot;

use super::{App, DEADLINE_HEADER};
use crate::batcher::{self, BackendError, Entry, EntryError, Queue};
use crate::error::ApiError;

pub(super) fn body_error(app: &App, r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge {
            limit: app.config.limits.max_body_bytes,
        }
    } else {
        ApiError::InvalidBody(r.body_text())
    }
}

pub(super) fn check_count(app: &App, count: usize, what: &'static str) -> Result<(), ApiError> {
    let max = app.config.limits.max_records;
    if count > max {
        return Err(ApiError::TooManyItems { count, what, max });
    }
    Ok(())
}

/// The longest `Retry-After` a refused request is given: past a minute the estimate says more
/// about a burst that will have changed than about when room will be free.
pub(crate) const MAX_RETRY_AFTER: u64 = 60;

/// Seconds to tell a refused client: the time the measured throughput needs to drain the queue
/// ahead of it (`drain`), at least 1 and at most [`MAX_RETRY_AFTER`]; `fallback` until a rate has
/// been measured.
pub(crate) fn retry_after_secs(drain: Option<Duration>, fallback: u64) -> u64 {
    match drain {
        Some(d) => (d.as_secs_f64().ceil() as u64).clamp(1, MAX_RETRY_AFTER),
        None => fallback,
    }
}

pub(super) fn overloaded<B: Batch>(
    app: &App,
    queue: &Queue<B>,
    refused: batcher::Refused,
) -> ApiError {
    ApiError::Overloaded {
        reason: refused.to_string(),
        retry_after: retry_after_secs(queue.drain_time(), app.config.retry_after),
    }
}

pub(super) fn shutting_down(app: &App) -> ApiError {
    ApiError::ShuttingDown {
        retry_after: app.config.retry_after,
    }
}

/// One request's items through a model's queue, the same way for every route: admitted as a
/// whole or refused with 503 + Retry-After, enqueued together (where they join other requests'
/// items in batches), and awaited until each has its answer or the request's deadline passes.
/// Items are `(key, input, padding cost)`; answers come back in the same order.
pub(super) async fn submit<B: Batch>(
    app: &App,
    queue: &Queue<B>,
    items: Vec<(B::Key, B::Item, usize)>,
    deadline: Option<Instant>,
) -> Result<Vec<batcher::Reply<B>>, ApiError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut seats = queue
        .admit(items.len(), remaining)
        .map_err(|r| overloaded(app, queue, r))?;
    let now = Instant::now();
    let mut entries = Vec::with_capacity(items.len());
    let mut replies = Vec::with_capacity(items.len());
    for (key, input, cost) in items {
        let (reply, rx) = oneshot::channel();
        let permit = seats
            .as_mut()
            .and_then(|s| s.split(1))
            .expect("one seat was admitted per item");
        entries.push(Entry {
            cost,
            input,
            key,
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
            .unwrap_or(Err(EntryError::Backend(BackendError::Abandoned)))
    }));
    with_deadline(deadline, answers).await
}

pub(super) async fn with_deadline<T>(
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

pub(super) fn item_error(e: EntryError) -> ApiError {
    match e {
        EntryError::DeadlineExceeded => ApiError::DeadlineExceeded,
        EntryError::Backend(e) => ApiError::Model(e),
    }
}

/// A request's body, and the instant its deadline passes (its header's, else the server's
/// default), counted from when it was received: how every route starts.
pub(super) fn accept(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Bytes, Option<Instant>), ApiError> {
    let body = body.map_err(|r| body_error(app, r))?;
    let received = Instant::now();
    let deadline = deadline(headers, app.config.deadline)?.map(|d| received + d);
    Ok((body, deadline))
}

/// The longest deadline a request may set: a day. Longer is a mistake (seconds sent as
/// milliseconds, a timestamp), not a wait anyone means.
pub(crate) const MAX_DEADLINE_MS: u64 = 86_400_000;

fn deadline(headers: &HeaderMap, default: Option<Duration>) -> Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get(DEADLINE_HEADER) else {
        return Ok(default);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms <= MAX_DEADLINE_MS)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::InvalidHeader(format!(
                "{DEADLINE_HEADER} must be a whole number of milliseconds from 0 to \
                 {MAX_DEADLINE_MS} (a day)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_drain_time_rounded_up_within_bounds() {
        let secs = |ms: u64| retry_after_secs(Some(Duration::from_millis(ms)), 7);
        assert_eq!(secs(4_500), 5);
        assert_eq!(secs(4_000), 4);
        // An empty or fast-draining queue still asks for a second; a huge one for at most 60.
        assert_eq!(secs(0), 1);
        assert_eq!(secs(300), 1);
        assert_eq!(secs(3_600_000), MAX_RETRY_AFTER);
        // Unmeasured: the configured value.
        assert_eq!(retry_after_secs(None, 7), 7);
    }
}
