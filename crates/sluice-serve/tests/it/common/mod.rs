//! A real server on an ephemeral loopback port, loaded with the tiny fixture model, and helpers
//! to talk to it over HTTP.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_serve::ServeConfig;
use tokio::sync::oneshot;

/// The tiny M2M100 checkpoint written by `tools/make_tiny_m2m100.py`.
pub fn fixture_dir() -> PathBuf {
    sluice_testkit::fixture("tiny-m2m100")
}

/// The fixture's reference outputs from transformers.
pub fn reference() -> Value {
    sluice_testkit::tiny_m2m100_reference()
}

/// Source texts and transformers' en→ja translations with the model's default (beam) settings.
pub fn reference_en_ja() -> Vec<(String, String)> {
    sluice_testkit::tiny_m2m100_en_ja()
}

/// A config serving the fixture. Its longest reference sentence (97 tokens) exceeds the tiny
/// model's `max_position_embeddings` (48), so the per-record limit is raised as a user would.
/// float32, so answers match transformers' reference token for token.
pub fn config() -> ServeConfig {
    let mut c = ServeConfig {
        models: vec![model("m2m100", &fixture_dir())],
        compute_type: sluice_models::m2m100::ComputeType::Float32,
        ..ServeConfig::default()
    };
    c.limits.max_input_tokens = Some(128);
    c
}

/// A model entry named `name` loaded from `dir`.
pub fn model(name: &str, dir: &std::path::Path) -> sluice_serve::ModelEntry {
    sluice_serve::ModelEntry::parse(&format!("{name}={}", dir.display())).unwrap()
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client without proxies or pooling limits.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Binds an ephemeral port, serves `config`, and waits until `/readyz` says ready.
    pub async fn start(config: ServeConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_serve::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let server = Self {
            base,
            client,
            stop: Some(stop),
            task,
        };
        for _ in 0..600 {
            if let Ok(r) = server.client.get(server.url("/readyz")).send().await {
                if r.status() == 200 {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become ready in 30 s");
    }

    /// The full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a JSON value to /translation; returns status, headers and body.
    pub async fn translate(&self, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(self.url("/translation"))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("non-JSON answer ({e}): {}", String::from_utf8_lossy(&bytes))
        });
        (status, headers, v)
    }

    /// GETs `path`; returns the status and the JSON answer.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        json_answer(self.client.get(self.url(path))).await
    }

    /// POSTs `body` as JSON to `path`; returns the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        json_answer(self.client.post(self.url(path)).json(body)).await
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Asks the server to stop and waits for it to drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

/// Sends `request`; returns the status and the answer read as JSON (a non-JSON answer fails the
/// test, showing it).
async fn json_answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("non-JSON answer ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// A translation request body.
pub fn request(from: &str, to: &str, records: &[(&str, &str)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}))
        .collect();
    json!({"payload": {"fromLang": from, "toLang": to, "records": records}})
}

/// `n` records cycling through the reference sentences, with ids `{prefix}{i}`.
pub fn reference_records(n: usize, prefix: &str) -> Vec<(String, String)> {
    let refs = reference_en_ja();
    (0..n)
        .map(|i| (format!("{prefix}{i}"), refs[i % refs.len()].0.clone()))
        .collect()
}

/// A translation request body from owned records.
pub fn request_owned(from: &str, to: &str, records: &[(String, String)]) -> Value {
    let borrowed: Vec<(&str, &str)> = records
        .iter()
        .map(|(id, text)| (id.as_str(), text.as_str()))
        .collect();
    request(from, to, &borrowed)
}

/// The value of a metric line (`name{labels} value`) whose name and labels start with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
