//! Access control, off by default: bearer API keys (with probes and metrics left open), a rate
//! per key or per client address answered 429 with Retry-After, and CORS for browsers.

use crate::common;
use std::num::NonZeroU32;

use common::{request, TestServer};
use reqwest::Method;
use serde_json::Value;

async fn send(
    server: &TestServer,
    method: Method,
    path: &str,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = server.client.request(method.clone(), server.url(path));
    if method == Method::POST {
        r = r.json(&request("en", "ja", &[("1", "Hello")]));
    }
    if let Some(key) = key {
        r = r.header("authorization", key);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn keys_are_required_where_set_and_probes_and_metrics_stay_open() {
    let mut config = common::config();
    config.access.api_keys = vec!["alpha".into(), "a-much-longer-second-key".into()];
    let server = TestServer::start(config).await;

    let (s, h, v) = send(&server, Method::POST, "/translation", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(h["www-authenticate"], "Bearer");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Bearer"),
        "{v}"
    );
    let (s, _, v) = send(&server, Method::POST, "/translation", Some("Bearer alphA")).await;
    assert_eq!(s, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not accepted"),
        "{v}"
    );
    // A key's prefix is not the key.
    let (s, _, _) = send(&server, Method::POST, "/translation", Some("Bearer alph")).await;
    assert_eq!(s, 401);
    for key in ["Bearer alpha", "bearer a-much-longer-second-key"] {
        let (s, _, v) = send(&server, Method::POST, "/translation", Some(key)).await;
        assert_eq!(s, 200, "{key}: {v}");
    }
    // The Open Inference Protocol's routes answer in its own error shape.
    let (s, _, v) = send(&server, Method::GET, "/v2/models/m2m100", None).await;
    assert_eq!(s, 401);
    assert!(v["error"].as_str().unwrap().contains("API key"), "{v}");
    let (s, _, _) = send(
        &server,
        Method::GET,
        "/v2/models/m2m100",
        Some("Bearer alpha"),
    )
    .await;
    assert_eq!(s, 200);
    // Probes and the scrape need no key; the document and the model list do.
    for path in [
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/metrics",
    ] {
        let (s, _, _) = send(&server, Method::GET, path, None).await;
        assert_eq!(s, 200, "{path}");
    }
    for path in ["/openapi.json", "/v1/models", "/v2"] {
        let (s, _, _) = send(&server, Method::GET, path, None).await;
        assert_eq!(s, 401, "{path}");
    }
    // Refusals are counted like any answer.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("sluice_http_requests_total{route=\"/translation\",status=\"401\"} 3"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn each_key_has_its_own_rate_and_a_refusal_says_when_to_come_back() {
    let mut config = common::config();
    config.access.api_keys = vec!["alpha".into(), "beta".into()];
    config.access.rate = NonZeroU32::new(1);
    config.access.burst = NonZeroU32::new(2);
    let server = TestServer::start(config).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (s, h, v) = send(&server, Method::POST, "/translation", Some("Bearer alpha")).await;
        if s == 429 {
            assert_eq!(v["error"]["code"], "rate_limited");
            let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&secs), "Retry-After {secs}");
        }
        statuses.push(s);
    }
    // A burst of two, then one a second: the third at once is refused.
    assert_eq!(statuses, [200, 200, 429]);
    // Another key is not held back by the first.
    let (s, _, _) = send(&server, Method::POST, "/translation", Some("Bearer beta")).await;
    assert_eq!(s, 200);
    // Nor are the probes.
    let (s, _, _) = send(&server, Method::GET, "/readyz", None).await;
    assert_eq!(s, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_keys_the_rate_is_per_client_address() {
    let mut config = common::config();
    config.access.rate = NonZeroU32::new(1);
    let server = TestServer::start(config).await;
    let (s, _, _) = send(&server, Method::POST, "/translation", None).await;
    assert_eq!(s, 200);
    let (s, h, _) = send(&server, Method::POST, "/translation", None).await;
    assert_eq!(s, 429);
    assert!(h.contains_key("retry-after"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn browsers_of_the_allowed_origins_get_cors_headers_before_any_key_is_asked() {
    let mut config = common::config();
    config.access.api_keys = vec!["alpha".into()];
    config.access.cors_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(config).await;
    let preflight = |origin: &'static str| {
        server
            .client
            .request(Method::OPTIONS, server.url("/translation"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let r = preflight("https://app.example.com").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r = preflight("https://elsewhere.example.com").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // The call itself still needs its key, and its answer carries the CORS headers.
    let r = server
        .client
        .post(server.url("/translation"))
        .header("origin", "https://app.example.com")
        .header("authorization", "Bearer alpha")
        .json(&request("en", "ja", &[("1", "Hello")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("retry-after"), "{exposed}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn by_default_there_is_no_key_no_rate_and_no_cors() {
    let server = TestServer::start(common::config()).await;
    for _ in 0..5 {
        let (s, h, _) = send(&server, Method::POST, "/translation", None).await;
        assert_eq!(s, 200);
        assert!(!h.contains_key("access-control-allow-origin"));
    }
    server.stop().await.unwrap();
}
