//! Optional access control, all off by default: bearer API keys, a request rate per key (or per
//! client address without keys), and CORS for browser clients.
//!
//! Keys are compared as SHA-256 digests with a constant-time equality (`subtle`), so neither a
//! key's bytes nor its length can be learnt from how long a refusal takes. The rate is a GCRA
//! per key (`governor`): `rate` requests a second with bursts of `burst`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::App;
use crate::error::ApiError;

/// A route group `--open-routes` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown open route group {0:?}: give health, metrics or openapi")]
pub struct UnknownRouteGroup(pub String);

/// Routes that can be left open when keys are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRoutes {
    /// `/healthz`, `/readyz`, `/v2/health/live`, `/v2/health/ready`: probes.
    Health,
    /// `/metrics`: the Prometheus scrape.
    Metrics,
    /// `/openapi.json`.
    OpenApi,
}

impl OpenRoutes {
    /// Parses `health`, `metrics` or `openapi`.
    pub fn parse(s: &str) -> Result<Self, UnknownRouteGroup> {
        match s {
            "health" => Ok(Self::Health),
            "metrics" => Ok(Self::Metrics),
            "openapi" => Ok(Self::OpenApi),
            other => Err(UnknownRouteGroup(other.to_owned())),
        }
    }

    fn covers(self, path: &str) -> bool {
        match self {
            Self::Health => matches!(
                path,
                "/healthz" | "/readyz" | "/v2/health/live" | "/v2/health/ready"
            ),
            Self::Metrics => path == "/metrics",
            Self::OpenApi => path == "/openapi.json",
        }
    }
}

/// Who may call the server, and how often.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Accepted bearer keys; empty lets every caller in.
    pub api_keys: Vec<String>,
    /// Route groups served without a key.
    pub open: Vec<OpenRoutes>,
    /// Requests a second per key (per client address without keys); `None` for no limit.
    pub rate: Option<NonZeroU32>,
    /// Requests a key may send at once above the rate.
    pub burst: Option<NonZeroU32>,
    /// Origins browsers may call from (`*` for any); empty sends no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for AccessConfig {
    /// Every caller in; when keys are set, probes and the metrics scrape stay open.
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            open: vec![OpenRoutes::Health, OpenRoutes::Metrics],
            rate: None,
            burst: None,
            cors_origins: Vec::new(),
        }
    }
}

/// The access state built from an [`AccessConfig`].
pub struct Access {
    digests: Vec<[u8; 32]>,
    open: Vec<OpenRoutes>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

/// Keys kept before the limiter forgets the callers that are back to a full allowance.
const TRACKED_CALLERS: usize = 10_000;

impl Access {
    /// Checks `config` and builds the state; an empty key is refused.
    pub fn new(config: &AccessConfig) -> anyhow::Result<Self> {
        if config.api_keys.iter().any(|k| k.trim().is_empty()) {
            anyhow::bail!("an API key is empty");
        }
        let limiter = config.rate.map(|rate| {
            let burst = config.burst.unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self {
            digests: config.api_keys.iter().map(|k| digest(k)).collect(),
            open: config.open.clone(),
            limiter,
        })
    }

    /// Which key `presented` is (its position), looking at every key whatever the answer.
    fn which(&self, presented: &str) -> Option<usize> {
        let d = digest(presented);
        let mut found = subtle::CtOption::new(0u64, subtle::Choice::from(0));
        for (i, k) in self.digests.iter().enumerate() {
            let here = subtle::CtOption::new(i as u64, k.ct_eq(&d));
            found =
                subtle::ConditionallySelectable::conditional_select(&found, &here, here.is_some());
        }
        Option::<u64>::from(found).map(|i| i as usize)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The bearer token of a request, if it sent one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Refuses requests without an accepted key (401) and callers over their rate (429).
pub(super) async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let access = &app.access;
    let path = req.uri().path();
    if access.open.iter().any(|g| g.covers(path)) {
        return next.run(req).await;
    }
    let caller = if access.digests.is_empty() {
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        ip.map_or_else(|| "unknown".to_owned(), |ip: IpAddr| ip.to_string())
    } else {
        let given = bearer(&req);
        let (presented, which) = (given.is_some(), given.and_then(|key| access.which(key)));
        match which {
            Some(i) => format!("key:{i}"),
            None => {
                let e = ApiError::Unauthorized { presented };
                return super::guard::refuse(req, e).await;
            }
        }
    };
    if let Some(limiter) = &access.limiter {
        if limiter.len() > TRACKED_CALLERS {
            limiter.retain_recent();
        }
        if let Err(not_until) = limiter.check_key(&caller) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let e = ApiError::RateLimited {
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            };
            return super::guard::refuse(req, e).await;
        }
    }
    next.run(req).await
}

/// The CORS layer for `origins` (`*` for any), or none when the list is empty.
pub fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("--cors-origin {o:?} is not a header value"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static(super::DEADLINE_HEADER),
            header::HeaderName::from_static("inference-header-content-length"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("inference-header-content-length"),
        ])
        .max_age(std::time::Duration::from_secs(600));
    Ok(Some(layer))
}
