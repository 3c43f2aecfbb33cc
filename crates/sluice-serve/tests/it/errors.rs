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

/// Sends `head` and then the whole of `body` before reading anything, as a blocking client
/// (Python's urllib, curl without Expect) does; returns the status line and the body answered.
fn blocking_post(addr: &str, head: &str, body: &[u8]) -> std::io::Result<(String, Value)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, json) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, serde_json::from_str(json).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_written_whole_before_reading_gets_its_413() {
    let server = TestServer::start(common::config()).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // 10 MB against the default 4 MiB limit.
    let body = vec![b' '; 10_000_000];
    for (path, v2) in [
        ("/translation", false),
        ("/v1/models/m2m100/infer", false),
        ("/v2/models/m2m100/infer", true),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (addr, body) = (addr.clone(), body.clone());
        let (status, v) = tokio::task::spawn_blocking(move || blocking_post(&addr, &head, &body))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{path}: the client saw {e} instead of an answer"));
        assert!(status.contains(" 413 "), "{path}: {status} {v}");
        if v2 {
            assert!(v["error"].as_str().unwrap().contains("4194304"), "{v}");
        } else {
            assert_eq!(code(&v), "payload_too_large", "{v}");
        }
    }
    // A client that waits for 100-continue is answered without sending the body.
    let head = format!(
        "POST /translation HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 10000000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    let (status, v) = tokio::task::spawn_blocking(move || blocking_post(&addr, &head, b""))
        .await
        .unwrap()
        .unwrap();
    assert!(status.contains(" 413 "), "{status} {v}");
    // The server goes on.
    let (s, _, _) = server
        .translate(&request("en", "ja", &[("1", "Hello")]))
        .await;
    assert_eq!(s, 200);
    server.stop().await.unwrap();
}
