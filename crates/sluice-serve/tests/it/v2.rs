//! The Open Inference Protocol routes (`/v2`) on a real server holding the tiny translation model
//! and the tone detector: the same answers as `/translation` and `/v1`, in JSON and in the
//! binary tensor extension, metadata and readiness, and errors in the protocol's shape.

use crate::common;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::{model, TestServer};
use serde_json::{json, Value};

fn onnx(rel: &str) -> PathBuf {
    sluice_testkit::fixture("onnx").join(rel)
}

async fn server(data_root: &Path) -> TestServer {
    let mut c = common::config();
    c.models = vec![
        model("m2m100", &common::fixture_dir()),
        model("tone", &onnx("tone-detector")),
    ];
    c.data_root = Some(data_root.to_owned());
    TestServer::start(c).await
}

/// Sends a request; returns status, headers and body.
async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<(Vec<u8>, Option<usize>)>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut r = server.client.request(method, server.url(path));
    if let Some((bytes, header_len)) = body {
        if let Some(n) = header_len {
            r = r.header("Inference-Header-Content-Length", n.to_string());
        }
        r = r.body(bytes);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// Posts a binary-extension request: `head` as the JSON part, then `tensor`.
async fn post_binary(
    server: &TestServer,
    path: &str,
    head: &Value,
    tensor: &[u8],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let head = serde_json::to_vec(head).unwrap();
    let length = head.len();
    let mut body = head;
    body.extend(tensor);
    send(
        server,
        reqwest::Method::POST,
        path,
        Some((body, Some(length))),
    )
    .await
}

/// A binary `BYTES` tensor: each element's 4-byte little-endian length, then the element.
fn bytes_tensor(items: &[&[u8]]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|b| {
            (b.len() as u32)
                .to_le_bytes()
                .into_iter()
                .chain(b.iter().copied())
        })
        .collect()
}

/// Splits a binary-extension answer into its JSON part and each output's bytes by name.
fn split_answer(
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> (Value, Vec<(String, Vec<u8>)>) {
    let n: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&body[..n]).unwrap();
    let mut rest = &body[n..];
    let mut blobs = Vec::new();
    for out in head["outputs"].as_array().unwrap() {
        if let Some(size) = out["parameters"]["binary_data_size"].as_u64() {
            let (mine, tail) = rest.split_at(size as usize);
            blobs.push((out["name"].as_str().unwrap().to_owned(), mine.to_vec()));
            rest = tail;
        }
    }
    assert!(rest.is_empty(), "bytes left after the outputs");
    (head, blobs)
}

fn output<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {answer}"))
}

#[tokio::test]
async fn health_server_and_model_metadata_follow_the_protocol() {
    let data = tempfile::tempdir().unwrap();
    let server = server(data.path()).await;
    assert_eq!(server.get_json("/v2/health/live").await.0, 200);
    assert_eq!(server.get_json("/v2/health/ready").await.0, 200);
    let (status, meta) = server.get_json("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "sluice");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let (status, m) = server.get_json("/v2/models/m2m100").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(
        m["inputs"],
        json!([{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(m["outputs"][0]["name"], "translation");
    let (status, m) = server.get_json("/v2/models/tone/versions/1").await;
    assert_eq!(status, 200, "{m}");
    let labels = m["parameters"]["labels"].as_array().unwrap().len();
    assert!(labels > 1, "{m}");
    assert_eq!(output(&m, "scores")["shape"], json!([-1, labels]));
    let names: Vec<&str> = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["audio", "path"],
        "paths are offered with a data root"
    );

    assert_eq!(server.get_json("/v2/models/tone/ready").await.0, 200);
    assert_eq!(
        server
            .get_json("/v2/models/m2m100/versions/1/ready")
            .await
            .0,
        200
    );
    for missing in [
        "/v2/models/nope",
        "/v2/models/tone/versions/2",
        "/v2/models/nope/ready",
    ] {
        let (status, e) = server.get_json(missing).await;
        assert_eq!(status, 404, "{missing}: {e}");
        assert!(e["error"].as_str().unwrap().contains("tone"), "{e}");
    }
}

#[tokio::test]
async fn translation_answers_as_the_contract_route_in_json_and_binary() {
    let data = tempfile::tempdir().unwrap();
    let server = server(data.path()).await;
    let reference = common::reference_en_ja();
    let texts: Vec<&str> = reference.iter().take(3).map(|(s, _)| s.as_str()).collect();
    let records: Vec<(&str, &str)> = texts.iter().map(|t| ("x", *t)).collect();
    let (status, _, want) = server
        .translate(&common::request("en", "ja", &records))
        .await;
    assert_eq!(status, 200);
    let want: Vec<&str> = want["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();

    // JSON tensors, a 2-D shape and a request id.
    let body = json!({
        "id": "req-7",
        "parameters": {"source_lang": "en", "target_lang": "ja"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3, 1],
                    "data": texts.iter().map(|t| json!([t])).collect::<Vec<_>>()}],
    });
    let (status, answer) = server.post_json("/v2/models/m2m100/infer", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "req-7");
    assert_eq!(answer["model_name"], "m2m100");
    let out = output(&answer, "translation");
    assert_eq!(out["shape"], json!([3, 1]));
    assert_eq!(out["datatype"], "BYTES");
    assert_eq!(out["data"], json!(want));

    // Binary in and out, on the versioned path, as Triton's client sends by default.
    let raw: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    let tensor = bytes_tensor(&raw);
    let head = json!({
        "parameters": {"source_lang": "en", "target_lang": "ja", "binary_data_output": true},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
                    "parameters": {"binary_data_size": tensor.len()}}],
    });
    let (status, headers, answer) = post_binary(
        &server,
        "/v2/models/m2m100/versions/1/infer",
        &head,
        &tensor,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let (head, blobs) = split_answer(&headers, &answer);
    assert_eq!(output(&head, "translation")["shape"], json!([3]));
    let want_raw: Vec<&[u8]> = want.iter().map(|t| t.as_bytes()).collect();
    assert_eq!(blobs, [("translation".to_owned(), bytes_tensor(&want_raw))]);
}

#[tokio::test]
async fn the_classifier_answers_as_v1_for_audio_bytes_and_paths() {
    let data = tempfile::tempdir().unwrap();
    let file = "tone-16k-mono.wav";
    let audio = std::fs::read(onnx(&format!("audio/{file}"))).unwrap();
    std::fs::write(data.path().join(file), &audio).unwrap();
    let server = server(data.path()).await;
    let v1 = json!({"inputs": [
        {"id": "a", "data": base64::engine::general_purpose::STANDARD.encode(&audio)},
        {"id": "b", "path": file},
    ]});
    let (status, want) = server.post_json("/v1/models/tone/infer", &v1).await;
    assert_eq!(status, 200, "{want}");
    let windows: Vec<&Value> = want["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["windows"].as_array().unwrap())
        .collect();
    let labels = want["labels"].as_array().unwrap().len();

    // Two inputs of the path tensor in JSON, every output in JSON.
    let body = json!({"inputs": [{"name": "path", "datatype": "BYTES", "shape": [2],
                                  "data": [file, file]}]});
    let (status, answer) = server.post_json("/v2/models/tone/infer", &body).await;
    assert_eq!(status, 200, "{answer}");
    let scores = output(&answer, "scores");
    assert_eq!(scores["datatype"], "FP32");
    let per_file = windows.len() / 2;
    assert_eq!(scores["shape"], json!([2 * per_file, labels]));
    let index = output(&answer, "input_index")["data"].as_array().unwrap();
    assert_eq!(index.iter().filter(|i| **i == json!(1)).count(), per_file);
    let want_scores: Vec<f64> = windows
        .iter()
        .flat_map(|w| w["scores"].as_array().unwrap())
        .map(|s| s.as_f64().unwrap())
        .collect();
    let got: Vec<f64> = scores["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(got, want_scores);
    let starts: Vec<&Value> = windows.iter().map(|w| &w["start"]).collect();
    assert_eq!(
        output(&answer, "start")["data"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        starts
    );
    assert_eq!(
        output(&answer, "duration")["data"],
        json!([
            want["outputs"][0]["duration"],
            want["outputs"][1]["duration"]
        ])
    );

    // The encoded file as binary, only the scores asked for, in binary.
    let tensor = bytes_tensor(&[&audio]);
    let head = json!({
        "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": tensor.len()}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": true}}],
    });
    let (status, headers, answer) =
        post_binary(&server, "/v2/models/tone/infer", &head, &tensor).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let (head, blobs) = split_answer(&headers, &answer);
    assert_eq!(head["outputs"].as_array().unwrap().len(), 1);
    let floats: Vec<f32> = blobs[0]
        .1
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want_f32: Vec<f32> = want_scores.iter().map(|&s| s as f32).collect();
    assert_eq!(floats, want_f32[..per_file * labels]);
}

#[tokio::test]
async fn bad_requests_get_the_protocols_error_with_the_right_status() {
    let data = tempfile::tempdir().unwrap();
    let server = server(data.path()).await;
    let text = |name: &str, datatype: &str, shape: Value, data: Value| {
        json!({"parameters": {"source_lang": "en", "target_lang": "ja"},
               "inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})
    };
    let audio = |name: &str, data: Value| json!({"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": data}]});
    let cases = [
        (
            "m2m100",
            text("texts", "BYTES", json!([1]), json!(["hi"])),
            400,
            "\"text\"",
        ),
        (
            "m2m100",
            text("text", "FP32", json!([1]), json!([1.0])),
            400,
            "BYTES",
        ),
        (
            "m2m100",
            text("text", "BYTES", json!([2]), json!(["hi"])),
            400,
            "2 elements",
        ),
        (
            "m2m100",
            text("text", "BYTES", json!([1]), json!([3])),
            400,
            "strings",
        ),
        (
            "m2m100",
            json!({"parameters": {"target_lang": "ja"},
                   "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}),
            400,
            "source_lang",
        ),
        (
            "m2m100",
            json!({"parameters": {"source_lang": "en", "target_lang": "xx"},
                   "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}),
            422,
            "xx",
        ),
        (
            "m2m100",
            json!({"parameters": {"source_lang": "en", "target_lang": "ja"},
                   "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
                   "outputs": [{"name": "nope"}]}),
            400,
            "translation",
        ),
        ("tone", audio("path", json!(["../etc/passwd"])), 400, ".."),
        (
            "tone",
            audio("path", json!(["missing.wav"])),
            404,
            "missing.wav",
        ),
        ("tone", audio("voice", json!(["x"])), 400, "\"audio\""),
        (
            "tone",
            text("path", "BYTES", json!([1]), json!(["x.wav"])),
            400,
            "no parameters",
        ),
        (
            "nope",
            text("text", "BYTES", json!([1]), json!(["hi"])),
            404,
            "m2m100",
        ),
    ];
    for (model, body, status, needle) in cases {
        let (got, e) = server
            .post_json(&format!("/v2/models/{model}/infer"), &body)
            .await;
        let message = e["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not the protocol's error: {e}"));
        assert_eq!(
            (got, e.as_object().unwrap().len()),
            (status, 1),
            "{body} -> {e}"
        );
        assert!(message.contains(needle), "{body} -> {message}");
    }
    // Binary sizes that do not add up to the body.
    let head = json!({
        "parameters": {"source_lang": "en", "target_lang": "ja"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": 100}}],
    });
    let tensor = bytes_tensor(&[b"hi"]);
    let (status, _, e) = post_binary(&server, "/v2/models/m2m100/infer", &head, &tensor).await;
    let e: Value = serde_json::from_slice(&e).unwrap();
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("binary_data_size"),
        "{e}"
    );
}
