//! Bad requests get a JSON `{"error": {"code", "message"}}` with the right status, and the server
//! keeps serving afterwards.

use crate::common;
use std::num::NonZeroUsize;

use common::{request, TestServer};
use serde_json::{json, Value};

async fn raw(server: &TestServer, body: &'static str) -> (u16, Value) {
    let r = server
        .client
        .post(server.url("/translation"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn each_bad_input_gets_its_status_code_and_message() {
    let mut config = common::config();
    config.limits.max_records = 10;
    config.limits.max_body_bytes = 64 * 1024;
    config.limits.max_input_tokens = Some(40);
    config.limits.max_beams = NonZeroUsize::new(4).unwrap();
    config.limits.max_new_tokens = NonZeroUsize::new(30).unwrap();
    let server = TestServer::start(config).await;

    let (s, v) = raw(&server, r#"{"payload": {"fromLang": "en""#).await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    assert!(message(&v).starts_with("malformed JSON"), "{v}");

    let (s, v) = raw(
        &server,
        r#"{"payload": {"fromLang": "en", "toLang": "ja"}}"#,
    )
    .await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    assert!(message(&v).contains("missing field `records`"), "{v}");

    let (s, v) = raw(
        &server,
        r#"{"payload": {"fromLang": "en", "toLang": "ja", "records": [{"id": 7, "text": "a"}]}}"#,
    )
    .await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    assert!(message(&v).contains("payload.records[0].id"), "{v}");

    let (s, _, v) = server.translate(&request("en", "jp", &[("1", "hi")])).await;
    assert_eq!((s, code(&v)), (422, "unknown_language"));
    assert!(
        message(&v).contains("\"jp\" in payload.toLang (did you mean \"ja\"?)"),
        "{v}"
    );
    assert!(message(&v).contains("GET /openapi.json"), "{v}");

    let (s, _, v) = server
        .translate(&request("xx-klingon", "ja", &[("1", "hi")]))
        .await;
    assert_eq!((s, code(&v)), (422, "unknown_language"));
    assert!(message(&v).contains("payload.fromLang"), "{v}");

    let eleven: Vec<(String, &str)> = (0..11).map(|i| (i.to_string(), "hi")).collect();
    let eleven: Vec<(&str, &str)> = eleven.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let (s, _, v) = server.translate(&request("en", "ja", &eleven)).await;
    assert_eq!((s, code(&v)), (413, "too_many_records"));
    assert!(message(&v).contains("the limit is 10"), "{v}");

    let big = "word ".repeat(20_000);
    let (s, _, v) = server.translate(&request("en", "ja", &[("1", &big)])).await;
    assert_eq!((s, code(&v)), (413, "payload_too_large"));
    assert!(message(&v).contains("65536 bytes"), "{v}");

    let long = "chocolate box ".repeat(30);
    let (s, _, v) = server
        .translate(&request("en", "ja", &[("ok", "hi"), ("long", &long)]))
        .await;
    assert_eq!((s, code(&v)), (422, "text_too_long"));
    assert!(message(&v).contains("records[1] (id \"long\")"), "{v}");
    assert!(message(&v).contains("the limit is 40 tokens"), "{v}");

    for (field, value, max) in [("beams", 0, 4), ("beams", 5, 4), ("maxNewTokens", 31, 30)] {
        let mut body = request("en", "ja", &[("1", "hi")]);
        body["payload"][field] = json!(value);
        let (s, _, v) = server.translate(&body).await;
        assert_eq!((s, code(&v)), (422, "invalid_parameter"), "{field}={value}");
        assert!(message(&v).contains(&format!("between 1 and {max}")), "{v}");
    }

    // A whole number written as a float is a whole number (JSON Schema's `integer`); 2.5 is not.
    let mut body = request("en", "ja", &[("1", "hi")]);
    body["payload"]["beams"] = json!(2.0);
    assert_eq!(server.translate(&body).await.0, 200);
    body["payload"]["beams"] = json!(2.5);
    let (s, _, v) = server.translate(&body).await;
    assert_eq!((s, code(&v)), (400, "invalid_request"), "{v}");
    assert!(message(&v).contains("payload.beams"), "{v}");

    // An unknown language is refused with no records too.
    let (s, _, v) = server.translate(&request("en", "xx", &[])).await;
    assert_eq!(s, 422, "{v}");

    // Deadlines: whole milliseconds up to a day.
    for bad in ["soon", "-1", "86400001", "9223372036854775808"] {
        let r = server
            .client
            .post(server.url("/translation"))
            .header("x-sluice-deadline-ms", bad)
            .json(&request("en", "ja", &[("1", "hi")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(code(&r.json().await.unwrap()), "invalid_header");
    }

    let r = server
        .client
        .get(server.url("/translation"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(code(&r.json().await.unwrap()), "method_not_allowed");
    let r = server
        .client
        .get(server.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.json().await.unwrap()), "not_found");

    // Nothing was lost: the server still translates.
    let (s, _, v) = server.translate(&request("en", "ja", &[("1", "hi")])).await;
    assert_eq!(s, 200, "{v}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_that_cannot_load_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = sluice_serve::ServeConfig {
        models: vec![common::model("m2m100", dir.path())],
        ..common::config()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = sluice_serve::serve(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");
}
