//! `POST /v1/models/{name}/infer` and `GET /v1/models` on a real server holding the tiny
//! translation model and the two ONNX audio classifiers of `tools/make_onnx_fixtures.py`:
//! parity with onnxruntime in-process and over HTTP, inline and path inputs mixed across
//! concurrent requests, path confinement, and clear errors.

use crate::common;
use std::num::NonZeroUsize;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::{model, TestServer};
use serde_json::{json, Value};
use sluice_models::classifier::AudioClassifier;
use sluice_models::service::classifier::ClassifierService;

/// Scores are compared with onnxruntime's within this (the bound).
const TOLERANCE: f64 = 1e-5;

fn onnx(rel: &str) -> PathBuf {
    sluice_testkit::fixture("onnx").join(rel)
}

fn reference(model: &str) -> Value {
    let text = std::fs::read_to_string(onnx(model).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The reference windows of one file: (start, end, scores).
fn reference_windows(model: &str, file: &str) -> Vec<(f64, f64, Vec<f64>)> {
    let r = reference(model);
    let f = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == file)
        .unwrap_or_else(|| panic!("{file} has no reference for {model}"));
    f["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let scores = w["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (
                w["start"].as_f64().unwrap(),
                w["end"].as_f64().unwrap(),
                scores,
            )
        })
        .collect()
}

fn assert_windows_match(got: &[(f64, f64, Vec<f64>)], want: &[(f64, f64, Vec<f64>)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: window count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9,
            "{what}[{i}]: {g:?} vs {w:?}"
        );
        assert_eq!(g.2.len(), w.2.len(), "{what}[{i}]: labels");
        for (a, b) in g.2.iter().zip(&w.2) {
            assert!(
                (a - b).abs() <= TOLERANCE,
                "{what}[{i}]: score {a} vs onnxruntime {b}"
            );
        }
    }
}

/// The windows of one output of an infer answer.
fn output_windows(output: &Value) -> Vec<(f64, f64, Vec<f64>)> {
    output["windows"]
        .as_array()
        .unwrap_or_else(|| panic!("no windows in {output}"))
        .iter()
        .map(|w| {
            let scores: Vec<f64> = w["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            // The top label is the argmax of the scores.
            let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(w["score"].as_f64().unwrap(), best, "{w}");
            (
                w["start"].as_f64().unwrap(),
                w["end"].as_f64().unwrap(),
                scores,
            )
        })
        .collect()
}

/// The cases with a reference: (model name on the server, fixture model dir, audio file).
const CASES: &[(&str, &str, &str)] = &[
    ("tone", "tone-detector", "audio/tone-16k-mono.wav"),
    ("tone", "tone-detector", "audio/noise-16k-mono.wav"),
    ("tone", "tone-detector", "audio/tone-16k-stereo.wav"),
    ("call", "call-classifier", "audio/call-8k-mono.wav"),
];

#[test]
fn in_process_scores_match_onnxruntime() {
    for &(_, dir, file) in CASES {
        let service = ClassifierService::new(AudioClassifier::load(&onnx(dir)).unwrap());
        let classifier = service.classifier();
        let bytes = std::fs::read(onnx(file)).unwrap();
        let prepared = service.windows_of(&bytes, Some(file)).unwrap();
        let samples: Vec<Vec<f32>> = prepared.windows.iter().map(|w| w.samples.clone()).collect();
        let scores = classifier.run(&samples).unwrap();
        let got: Vec<_> = prepared
            .windows
            .iter()
            .zip(scores)
            .map(|(w, s)| (w.start, w.end, s.into_iter().map(f64::from).collect()))
            .collect();
        assert_windows_match(&got, &reference_windows(dir, file), file);
        // One window at a time gives the same numbers as the whole batch.
        let one = classifier.run(&samples[..1]).unwrap();
        assert_eq!(
            one[0].iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
            got[0].2
        );
    }
}

#[test]
fn unusable_model_directories_fail_with_the_reason() {
    let err = AudioClassifier::load(&onnx("broken"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.onnx") && err.contains("ONNX"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = AudioClassifier::load(empty.path()).unwrap_err().to_string();
    assert!(err.contains("sluice-model.toml"), "{err}");
    // A spec whose window does not fit the graph fails at load, naming the window.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        onnx("tone-detector/model.onnx"),
        dir.path().join("model.onnx"),
    )
    .unwrap();
    let spec = std::fs::read_to_string(onnx("tone-detector/sluice-model.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice-model.toml"),
        spec.replace(
            "labels = [\"noise\", \"tone\", \"sweep\"]",
            "labels = [\"a\", \"b\"]",
        ),
    )
    .unwrap();
    let err = AudioClassifier::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("3 scores") && err.contains("2 labels"),
        "{err}"
    );
}

/// A data root holding the fixture audio, a text file, and the attack material.
struct DataRoot {
    base: tempfile::TempDir,
}

impl DataRoot {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir_all(root.join("audio")).unwrap();
        for entry in std::fs::read_dir(onnx("audio")).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, root.join("audio").join(p.file_name().unwrap())).unwrap();
        }
        std::fs::write(root.join("corrupt.wav"), b"RIFF not really a wave file").unwrap();
        std::fs::write(base.path().join("secret.wav"), b"SECRET-OUTSIDE").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret.wav"), root.join("escape.wav"))
            .unwrap();
        std::os::unix::fs::symlink(base.path(), root.join("up")).unwrap();
        let fifo = std::ffi::CString::new(root.join("pipe.wav").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        Self { base }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        std::fs::write(self.root().join(rel), bytes).unwrap();
    }
}

fn classifier_config(data_root: Option<&Path>) -> sluice_serve::ServeConfig {
    let mut c = common::config();
    c.models = vec![
        model("m2m100", &common::fixture_dir()),
        model("tone", &onnx("tone-detector")),
        model("call", &onnx("call-classifier")),
    ];
    c.data_root = data_root.map(Path::to_owned);
    c
}

async fn infer(server: &TestServer, model: &str, body: &Value) -> (u16, Value) {
    server
        .post_json(&format!("/v1/models/{model}/infer"), body)
        .await
}

fn inline(id: &str, file: &str) -> Value {
    let bytes = std::fs::read(onnx(file)).unwrap();
    json!({"id": id, "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

fn by_path(id: &str, file: &str) -> Value {
    json!({"id": id, "path": file})
}

#[tokio::test]
async fn models_are_listed_with_kind_inputs_and_parameters() {
    let data = DataRoot::new();
    let server = TestServer::start(classifier_config(Some(&data.root()))).await;
    let r = server
        .client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let models: Value = r.json().await.unwrap();
    let by_name = |n: &str| {
        models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing from {models}"))
            .clone()
    };
    let t = by_name("m2m100");
    assert_eq!(
        (t["kind"].as_str(), t["status"].as_str()),
        (Some("translation"), Some("ready"))
    );
    assert_eq!(t["inputKind"], "text");
    assert!(t["parameters"]["fromLang"].is_string(), "{t}");
    let c = by_name("tone");
    assert_eq!(c["kind"], "audio-classifier");
    assert_eq!(c["inputs"], json!(["data", "path"]));
    assert_eq!(c["details"]["labels"], json!(["noise", "tone", "sweep"]));
    assert_eq!(c["details"]["sample_rate"], 16000);
    assert_eq!(by_name("call")["details"]["output"], "softmax");
    // Both routes are in the OpenAPI document, with the input schema.
    let (_, doc) = server.get_json("/openapi.json").await;
    assert!(doc["paths"]["/v1/models"]["get"].is_object(), "{doc}");
    assert!(doc["components"]["schemas"]["InferInput"]["properties"]["path"].is_object());
    // One inference path per model, with the request that model takes.
    assert!(doc["paths"]["/v1/models/{name}/infer"].is_null(), "{doc}");
    for (name, sources) in [
        ("tone", json!(["data", "path"])),
        ("m2m100", json!(["text", "data", "path"])),
    ] {
        let op = &doc["paths"][format!("/v1/models/{name}/infer")]["post"];
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        let input = &schema["properties"]["inputs"]["items"];
        let one_of: Vec<_> = input["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["required"][0].clone())
            .collect();
        assert_eq!(json!(one_of), sources, "{name}: {schema}");
        assert_eq!(input["additionalProperties"], false);
    }
    let m2m = &doc["paths"]["/v1/models/m2m100/infer"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["parameters"];
    assert_eq!(m2m["required"], json!(["fromLang", "toLang"]), "{m2m}");
    assert!(m2m["properties"]["toLang"]["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("ja")));
    let v2 = &doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0];
    let names: Vec<&Value> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["name"])
        .collect();
    assert_eq!(v2["schema"]["enum"], json!(names), "{v2}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn scores_over_http_match_onnxruntime_inline_and_by_path() {
    let data = DataRoot::new();
    let server = TestServer::start(classifier_config(Some(&data.root()))).await;
    for &(name, dir, file) in CASES {
        let want = reference_windows(dir, file);
        for input in [inline("x", file), by_path("x", file)] {
            let (s, v) = infer(&server, name, &json!({"inputs": [input]})).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["model"], name);
            let out = &v["outputs"][0];
            assert_eq!(out["id"], "x");
            assert_windows_match(&output_windows(out), &want, file);
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_requests_mixing_inline_and_path_inputs_come_back_in_order() {
    let data = DataRoot::new();
    let mut config = classifier_config(Some(&data.root()));
    // A long fill window so windows of concurrent requests share batches.
    config.batch.max_wait = Duration::from_millis(50);
    config.batch.max_items = NonZeroUsize::new(64).unwrap();
    // Its own model name: the metrics recorder is global to the test process, and other tests
    // classify with "tone" at the same time.
    config
        .models
        .push(model("tone-batching", &onnx("tone-detector")));
    let server = Arc::new(TestServer::start(config).await);
    let files = [
        "audio/tone-16k-mono.wav",
        "audio/noise-16k-mono.wav",
        "audio/tone-16k-stereo.wav",
    ];
    let tasks: Vec<_> = (0..12)
        .map(|r| {
            let server = server.clone();
            tokio::spawn(async move {
                // Each request orders the files and picks inline or path differently.
                let picks: Vec<(String, &str)> = (0..4)
                    .map(|k| (format!("r{r}-{k}"), files[(r + k) % files.len()]))
                    .collect();
                let inputs: Vec<Value> = picks
                    .iter()
                    .enumerate()
                    .map(|(k, (id, f))| {
                        if (r + k) % 2 == 0 {
                            inline(id, f)
                        } else {
                            by_path(id, f)
                        }
                    })
                    .collect();
                let (s, v) = infer(&server, "tone-batching", &json!({"inputs": inputs})).await;
                assert_eq!(s, 200, "{v}");
                for ((id, f), out) in picks.iter().zip(v["outputs"].as_array().unwrap()) {
                    assert_eq!(out["id"].as_str(), Some(id.as_str()));
                    assert_windows_match(
                        &output_windows(out),
                        &reference_windows("tone-detector", f),
                        f,
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 12 requests × 4 files: windows of different requests were scored in shared batches.
    let metrics = server.metrics().await;
    let batches =
        common::metric(&metrics, "sluice_batch_size_count{model=\"tone-batching\"}").unwrap();
    let windows =
        common::metric(&metrics, "sluice_batch_size_sum{model=\"tone-batching\"}").unwrap();
    let expected: usize = (0..12)
        .flat_map(|r| (0..4).map(move |k| files[(r + k) % files.len()]))
        .map(|f| reference_windows("tone-detector", f).len())
        .sum();
    assert_eq!(windows, expected as f64, "{metrics}");
    assert!(
        batches < 12.0,
        "{batches} batches for 12 requests: {metrics}"
    );
    Arc::try_unwrap(server).ok().unwrap().stop().await.unwrap();
}

#[tokio::test]
async fn translation_takes_text_and_text_files() {
    let data = DataRoot::new();
    let refs = common::reference_en_ja();
    data.write("sentence.txt", refs[1].0.as_bytes());
    let server = TestServer::start(classifier_config(Some(&data.root()))).await;
    let body = json!({
        "inputs": [{"id": "a", "text": refs[0].0}, {"id": "b", "path": "sentence.txt"}],
        "parameters": {"fromLang": "en", "toLang": "ja"},
    });
    let (s, v) = infer(&server, "m2m100", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outputs"][0], json!({"id": "a", "text": refs[0].1}));
    assert_eq!(v["outputs"][1], json!({"id": "b", "text": refs[1].1}));
    // Parameters are checked like /translation's payload.
    let (s, v) = infer(
        &server,
        "m2m100",
        &json!({"inputs": [{"id": "a", "text": "hi"}], "parameters": {"fromLang": "en", "toLang": "xx"}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("unknown_language")),
        "{v}"
    );
    let (s, v) = infer(
        &server,
        "m2m100",
        &json!({"inputs": [{"id": "a", "text": "hi"}]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("fromLang"),
        "{v}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn path_attacks_are_refused_and_nothing_outside_is_read() {
    let data = DataRoot::new();
    let server = TestServer::start(classifier_config(Some(&data.root()))).await;
    let outside = data.base.path().join("secret.wav").display().to_string();
    let attacks: Vec<(String, u16)> = vec![
        ("../secret.wav".into(), 400),
        ("audio/../../secret.wav".into(), 400),
        (outside, 400),
        ("%2e%2e/secret.wav".into(), 404),
        ("..%2Fsecret.wav".into(), 404),
        ("escape.wav".into(), 403),
        ("up/secret.wav".into(), 403),
        ("audio".into(), 422),
        ("pipe.wav".into(), 422),
        ("audio/tone-16k-mono.wav\u{0}".into(), 400),
        ("missing.wav".into(), 404),
    ];
    for (path, status) in attacks {
        for model in ["tone", "m2m100"] {
            let mut body = json!({"inputs": [{"id": "evil", "path": path}]});
            if model == "m2m100" {
                body["parameters"] = json!({"fromLang": "en", "toLang": "ja"});
            }
            let (s, v) = infer(&server, model, &body).await;
            assert_eq!(s, status, "{path:?} on {model}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.contains(&path.replace('\0', "")) || msg.contains(&path),
                "{path:?}: {msg}"
            );
            assert!(msg.contains("evil"), "the message names the input: {msg}");
            assert!(!v.to_string().contains("SECRET-OUTSIDE"), "{v}");
        }
    }
    // The server still answers afterwards (the FIFO did not block a thread for good).
    let (s, v) = infer(
        &server,
        "tone",
        &json!({"inputs": [by_path("ok", "audio/noise-16k-mono.wav")]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn url_inputs_read_object_storage_under_allowed_prefixes_only() {
    let s3 = sluice_testkit::S3Server::start();
    s3.create_bucket("audio");
    let options = s3.options();
    let store = sluice_core::storage::Location::parse_with("s3://audio/in", &options).unwrap();
    let wav = std::fs::read(onnx("audio/tone-16k-mono.wav")).unwrap();
    store.write("tone.wav", wav.into()).await.unwrap();
    let mut config = classifier_config(None);
    config.allow_urls = vec!["s3://audio/in/".to_owned()];
    config.storage_options = options;
    let server = TestServer::start(config).await;
    let input = json!({"id": "u", "url": "s3://audio/in/tone.wav"});
    let (s, v) = infer(&server, "tone", &json!({"inputs": [input]})).await;
    assert_eq!(s, 200, "{v}");
    assert_windows_match(
        &output_windows(&v["outputs"][0]),
        &reference_windows("tone-detector", "audio/tone-16k-mono.wav"),
        "s3",
    );
    for (url, status, code) in [
        ("s3://audio/other/tone.wav", 403, "url_refused"),
        ("s3://audio/in/../other/tone.wav", 403, "url_refused"),
        ("file:///etc/passwd", 403, "url_refused"),
        ("s3://audio/in/missing.wav", 404, "input_not_found"),
    ] {
        let (s, v) = infer(
            &server,
            "tone",
            &json!({"inputs": [{"id": "u", "url": url}]}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{url}: {v}"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains(url), "{v}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_inputs_get_clear_errors() {
    let data = DataRoot::new();
    let server = TestServer::start(classifier_config(Some(&data.root()))).await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("nope", json!({"inputs": []}), 404, "unknown_model"),
        (
            "tone",
            json!({"inputs": [{"id": "t", "text": "hello"}]}),
            400,
            "invalid_input",
        ),
        (
            "tone",
            json!({"inputs": [{"id": "t", "path": "a.wav", "data": "AAAA"}]}),
            400,
            "invalid_input",
        ),
        (
            "tone",
            json!({"inputs": [{"id": "t"}]}),
            400,
            "invalid_input",
        ),
        (
            "tone",
            json!({"inputs": [{"id": "t", "data": "%%%"}]}),
            400,
            "invalid_data",
        ),
        (
            "tone",
            json!({"inputs": [{"id": "t", "data": "bm90IGF1ZGlv"}]}),
            422,
            "invalid_audio",
        ),
        (
            "tone",
            json!({"inputs": [by_path("t", "corrupt.wav")]}),
            422,
            "invalid_audio",
        ),
        (
            "tone",
            json!({"inputs": [{"id": "t", "url": "s3://bucket/a.wav"}]}),
            403,
            "url_refused",
        ),
        (
            "tone",
            json!({"inputs": [], "parameters": {"x": 1}}),
            400,
            "invalid_parameters",
        ),
        (
            "tone",
            json!({"inputs": [{"id": "t", "paht": "a.wav"}]}),
            400,
            "invalid_request",
        ),
    ];
    for (model, body, status, code) in cases {
        let (s, v) = infer(&server, model, &body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    // An empty request is answered with no outputs.
    let (s, v) = infer(&server, "tone", &json!({"inputs": []})).await;
    assert_eq!((s, v["outputs"].clone()), (200, json!([])), "{v}");
    server.stop().await.unwrap();

    // Without --data-root, path inputs are refused before anything is read.
    let server = TestServer::start(classifier_config(None)).await;
    let (s, v) = infer(
        &server,
        "tone",
        &json!({"inputs": [by_path("t", "audio/tone-16k-mono.wav")]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("path_inputs_disabled")),
        "{v}"
    );
    server.stop().await.unwrap();
}

/// A request's windows go to the batcher in groups as its files are decoded, so a request may
/// make many more windows than the queue holds (long recordings by path or URL): with room for
/// four windows, eight inputs of several windows each all come back, each window scored as
/// onnxruntime scores it.
#[tokio::test]
async fn a_request_with_more_windows_than_the_queue_holds_is_scored_in_groups() {
    let data = DataRoot::new();
    let mut config = classifier_config(Some(&data.root()));
    config.window_capacity = std::num::NonZeroUsize::new(4).unwrap();
    let server = TestServer::start(config).await;
    let &(name, dir, file) = &CASES[0];
    let want = reference_windows(dir, file);
    let inputs: Vec<Value> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                by_path(&format!("in-{i}"), file)
            } else {
                inline(&format!("in-{i}"), file)
            }
        })
        .collect();
    assert!(
        want.len() * inputs.len() > 4,
        "the request must not fit the queue"
    );
    let (s, v) = infer(&server, name, &json!({ "inputs": inputs })).await;
    assert_eq!(s, 200, "{v}");
    for i in 0..8 {
        let out = &v["outputs"][i];
        assert_eq!(out["id"], format!("in-{i}"));
        assert_windows_match(&output_windows(out), &want, file);
    }
    server.stop().await.unwrap();
}
