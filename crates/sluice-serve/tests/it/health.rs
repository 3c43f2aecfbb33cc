//! Health, readiness, metrics and the OpenAPI document.

use crate::common;

use common::TestServer;
use serde_json::Value;

#[tokio::test]
async fn health_readiness_metrics_and_openapi_describe_the_server() {
    let server = TestServer::start(common::config()).await;
    let get = |path: &str| server.client.get(server.url(path)).send();

    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "alive");

    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["queueCapacity"], 1024);

    let r = get("/metrics").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("sluice_http_requests_total{route=\"/readyz\",status=\"200\"}"),
        "{text}"
    );

    let r = get("/openapi.json").await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    for path in [
        "/translation",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v2",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/infer",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let responses = &doc["paths"]["/translation"]["post"]["responses"];
    for code in ["200", "400", "413", "422", "503", "504"] {
        assert!(responses[code].is_object(), "{code} missing");
    }
    let langs = doc["components"]["schemas"]["Payload"]["properties"]["toLang"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(langs.len(), 100);
    assert!(langs.contains(&Value::from("ja")));
    // The bounds this server enforces, as it enforces them.
    let limits = sluice_serve::Limits::default();
    let payload = &doc["components"]["schemas"]["Payload"]["properties"];
    assert_eq!(payload["beams"]["minimum"], 1, "{payload}");
    assert_eq!(
        payload["beams"]["maximum"],
        limits.max_beams.get(),
        "{payload}"
    );
    assert_eq!(
        payload["maxNewTokens"]["maximum"],
        limits.max_new_tokens.get()
    );
    assert_eq!(payload["records"]["maxItems"], limits.max_records);
    let inputs = &doc["components"]["schemas"]["InferRequest"]["properties"]["inputs"];
    assert_eq!(inputs["maxItems"], limits.max_records);
    let deadline = doc["paths"]["/translation"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "x-sluice-deadline-ms")
        .unwrap();
    assert_eq!(deadline["schema"]["type"], "integer");
    assert_eq!(deadline["schema"]["minimum"], 0);
    server.stop().await.unwrap();
}
