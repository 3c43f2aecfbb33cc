//! The `model` stage against a remote Sluice server: `POST /v1/models/{name}/infer` with
//! retries, narrowing, and checks at setup (see the parent module).

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use sluice_models::service::{InferOutput, InferResponse};
use sluice_pipeline::stages::Record;
use sluice_pipeline::{ItemError, StageError};

use super::{field, read_bytes, InputAs, ModelSpec};

type Outcome = Result<InferOutput, ItemError>;

/// A worker's connection to a remote server's model.
pub(super) struct Remote {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    /// A client for `url`, refusing at once a server whose certificate is not trusted, that
    /// refuses the stage's key or that serves no such model: none of those changes by retrying.
    /// Any other failure (a server still starting) is left to the batches' retries.
    pub(super) fn connect(spec: &ModelSpec, url: &str) -> Result<Self, StageError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StageError::new(format!("async runtime: {e}")))?;
        // The client's connector belongs to the runtime that drives it.
        let inside = runtime.enter();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(spec.timeout_seconds))
            .default_headers(auth_headers(spec.api_key_env.as_deref())?)
            .build()
            .map_err(|e| StageError::new(format!("HTTP client: {e}")))?;
        drop(inside);
        if let Err(e) = runtime.block_on(async { client.get(url).send().await }) {
            if let Some(why) = untrusted_certificate(&e) {
                return Err(StageError::fatal(untrusted_message(url, &why)));
            }
        }
        if let Some((listing, name)) = models_listing(url) {
            let answer = runtime.block_on(async {
                let r = client.get(&listing).send().await?;
                let status = r.status();
                Ok::<_, reqwest::Error>((status, r.text().await.unwrap_or_default()))
            });
            if let Ok((status, body)) = answer {
                check_listing(url, name, status, &body).map_err(StageError::fatal)?;
            }
        }
        Ok(Self { client, runtime })
    }

    /// One output per record of `batch`, in order.
    pub(super) fn run(&self, spec: &ModelSpec, batch: &[Record]) -> Vec<Outcome> {
        self.runtime.block_on(run_remote(spec, &self.client, batch))
    }
}

/// Builds the request input for one record: a path under `data_root`, else the data or text.
fn remote_input(spec: &ModelSpec, i: usize, record: &Record) -> Result<Value, ItemError> {
    let value = field(spec, record)?;
    let id = i.to_string();
    Ok(match spec.input {
        InputAs::Text => json!({"id": id, "text": value}),
        InputAs::Url => json!({"id": id, "url": value}),
        InputAs::File => {
            let shared = spec
                .data_root
                .as_ref()
                .and_then(|root| Path::new(value).strip_prefix(root).ok());
            match shared {
                Some(rel) => json!({"id": id, "path": rel.to_string_lossy()}),
                None => {
                    let bytes = read_bytes(spec, value)?;
                    json!({"id": id, "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
                }
            }
        }
    })
}

async fn run_remote(spec: &ModelSpec, client: &reqwest::Client, batch: &[Record]) -> Vec<Outcome> {
    use futures::stream::{self, StreamExt};
    let mut outcomes: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
    let mut ready = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        match remote_input(spec, i, record) {
            Ok(input) => ready.push((i, input)),
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    let chunks: Vec<Vec<(usize, Value)>> = ready
        .chunks(spec.request_inputs)
        .map(<[_]>::to_vec)
        .collect();
    let results: Vec<Vec<(usize, Outcome)>> = stream::iter(chunks)
        .map(|chunk| send_narrowing(spec, client, chunk))
        .buffer_unordered(spec.concurrency)
        .collect()
        .await;
    for (i, outcome) in results.into_iter().flatten() {
        outcomes[i] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(ItemError::permanent("no answer for this input"))))
        .collect()
}

/// Sends one request; when the server refuses it for one of its inputs (4xx), resends the
/// inputs one by one so that only the bad one fails.
async fn send_narrowing(
    spec: &ModelSpec,
    client: &reqwest::Client,
    chunk: Vec<(usize, Value)>,
) -> Vec<(usize, Outcome)> {
    match send(spec, client, &chunk).await {
        Ok(outputs) => chunk
            .iter()
            .map(|(i, _)| *i)
            .zip(outputs.into_iter().map(Ok))
            .collect(),
        Err(RequestFailure::Input(_)) if chunk.len() > 1 => {
            let mut out = Vec::with_capacity(chunk.len());
            for one in chunk {
                let i = one.0;
                let outcome = match send(spec, client, std::slice::from_ref(&one)).await {
                    Ok(mut o) if o.len() == 1 => Ok(o.remove(0)),
                    Ok(_) => Err(ItemError::permanent(
                        "the server answered a wrong output count",
                    )),
                    Err(f) => Err(f.item_error()),
                };
                out.push((i, outcome));
            }
            out
        }
        Err(f) => {
            let e = f.item_error();
            chunk.iter().map(|(i, _)| (*i, Err(e.clone()))).collect()
        }
    }
}

/// The TLS error of a request refused because the server's certificate is not trusted (or
/// not valid for its name), found down the error's causes.
fn untrusted_certificate(e: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(
            t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = c.downcast_ref::<rustls::Error>()
        {
            return Some(t.to_string());
        }
        // An I/O error's `source` skips the error it wraps (where the TLS error sits, sometimes
        // inside a second I/O error), so the walk goes through it instead.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

/// `Authorization: Bearer` from the variable `env`, when a key is configured.
fn auth_headers(env: Option<&str>) -> Result<reqwest::header::HeaderMap, StageError> {
    let mut headers = reqwest::header::HeaderMap::new();
    let Some(env) = env else {
        return Ok(headers);
    };
    let key = std::env::var(env)
        .map_err(|_| StageError::fatal(format!("api_key_env: {env} is not set")))?;
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
        .map_err(|_| StageError::fatal(format!("api_key_env: {env} is not a usable key")))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// For `http://host/.../v1/models/NAME`, the server's model list and NAME.
fn models_listing(url: &str) -> Option<(String, &str)> {
    let (base, name) = url.trim_end_matches('/').rsplit_once('/')?;
    base.ends_with("/v1/models")
        .then(|| (base.to_owned(), name))
        .filter(|_| !name.is_empty())
}

/// Whether the model list a server answered names `name`; why not as a message.
fn check_listing(
    url: &str,
    name: &str,
    status: reqwest::StatusCode,
    body: &str,
) -> Result<(), String> {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(format!(
            "{url}: the server needs an API key this stage does not have: name the variable \
             holding it with api_key_env (or check the key)"
        ));
    }
    if !status.is_success() {
        // Starting, overloaded, or not Sluice: the batches' retries will tell.
        return Ok(());
    }
    let Ok(models) = serde_json::from_str::<Vec<Value>>(body) else {
        return Ok(());
    };
    let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    if names.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "{url}: the server serves no model {name:?} (it serves {})",
            names.join(", ")
        ))
    }
}

fn untrusted_message(url: &str, why: &str) -> String {
    format!(
        "{url}: {why}: the server's certificate is not trusted here; add its certificate \
         authority to the system's store or name it in SSL_CERT_FILE"
    )
}

/// Why a request got no outputs.
enum RequestFailure {
    /// The server refused the request's content (4xx), or its certificate is not trusted:
    /// permanent.
    Input(String),
    /// Retries ran out on overload or lost connections: transient.
    Unavailable(String),
}

impl RequestFailure {
    fn item_error(self) -> ItemError {
        match self {
            RequestFailure::Input(m) => ItemError::permanent(m),
            RequestFailure::Unavailable(m) => ItemError::transient(m),
        }
    }
}

/// One request, retried with backoff while the server is overloaded or unreachable.
async fn send(
    spec: &ModelSpec,
    client: &reqwest::Client,
    chunk: &[(usize, Value)],
) -> Result<Vec<InferOutput>, RequestFailure> {
    let url = format!(
        "{}/infer",
        spec.url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
    );
    let body = json!({
        "inputs": chunk.iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "parameters": spec.parameters,
    });
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=spec.max_attempts {
        let wait = match client.post(&url).json(&body).send().await {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(Duration::from_secs_f64);
                let text = resp.text().await.unwrap_or_default();
                if status.is_success() {
                    let parsed: InferResponse = serde_json::from_str(&text).map_err(|e| {
                        RequestFailure::Input(format!("{url}: unreadable answer: {e}"))
                    })?;
                    if parsed.outputs.len() != chunk.len() {
                        return Err(RequestFailure::Input(format!(
                            "{url}: {} outputs for {} inputs",
                            parsed.outputs.len(),
                            chunk.len()
                        )));
                    }
                    return Ok(parsed.outputs);
                }
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                last = format!("{url}: {status}: {message}");
                let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                if !retryable {
                    return Err(if status.is_client_error() {
                        RequestFailure::Input(last)
                    } else {
                        RequestFailure::Unavailable(last)
                    });
                }
                // At least what the server asks, and never a tight loop when it asks for 0 s.
                retry_after.map_or(backoff, |r| r.max(Duration::from_millis(50)))
            }
            Err(e) => {
                if let Some(why) = untrusted_certificate(&e) {
                    return Err(RequestFailure::Input(untrusted_message(&url, &why)));
                }
                // Connect errors, resets and timeouts: the server is restarting or gone.
                last = format!("{url}: {e}");
                backoff
            }
        };
        if attempt < spec.max_attempts {
            tracing::debug!(attempt, wait_ms = wait.as_millis() as u64, error = %last, "retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    Err(RequestFailure::Unavailable(format!(
        "{last} (gave up after {} attempts)",
        spec.max_attempts
    )))
}
