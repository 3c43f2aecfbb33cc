//! The Open Inference Protocol (KServe v2, Triton's HTTP API) beside `/translation` and `/v1`:
//! health, server and model metadata, model readiness and inference, with the binary tensor
//! extension Triton's clients use by default (`Inference-Header-Content-Length`: the JSON header,
//! then each binary tensor in order). Requests run through the same admission, batchers and
//! limits as `/v1` (a v2 request becomes the `/v1` inputs it means), and errors are the
//! protocol's `{"error": "..."}` with the status and `Retry-After` the `/v1` routes give.
//!
//! - A translation model takes one `BYTES` input `text` (UTF-8 texts) and the request parameters
//!   `source_lang`, `target_lang` (required), `beams` and `max_new_tokens`; it returns `BYTES`
//!   `translation` in the input's shape.
//! - An audio classifier takes one `BYTES` input: `audio` (encoded files), `path` (files under
//!   `--data-root`) or `url` (objects under `--allow-url` prefixes). It returns the windows of
//!   every input in order: `scores` (`FP32`, `[windows, labels]`), `start` and `end` (`FP64`
//!   seconds), `input_index` (`INT32`, which input a window is from) and `duration` (`FP64`, one
//!   per input). The labels are in the model's metadata (`parameters.labels`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_models::service::{NamedTensor, Tensor};

use super::served::loaded;
use super::submit::{accept, check_count};
use super::{readiness, App, Slot};
use crate::api::parse_json;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The header that splits a binary-extension body into its JSON part and its tensors.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The only model version: each served model has one.
const VERSION: &str = "1";

/// An [`ApiError`] in the protocol's shape: `{"error": "..."}`, same status and `Retry-After`.
pub(super) struct V2Error(ApiError);

impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> Self {
        V2Error(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let mut resp = (
            self.0.status(),
            Json(json!({ "error": self.0.to_string() })),
        )
            .into_response();
        if let Some(s) = self.0.retry_after() {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

type V2Result<T> = Result<T, V2Error>;

fn invalid(message: impl Into<String>) -> V2Error {
    V2Error(ApiError::InvalidRequest(message.into()))
}

/// `GET /v2`: the server's name, version and protocol extensions.
#[utoipa::path(get, path = "/v2", tag = "Open Inference Protocol",
    responses((status = 200, description = "name, version and extensions", body = Object)))]
pub(super) async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "sluice",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// `GET /v2/health/live`: the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "Open Inference Protocol",
    responses((status = 200, body = Object)))]
pub(super) async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 when `/readyz` is, 503 otherwise.
#[utoipa::path(get, path = "/v2/health/ready", tag = "Open Inference Protocol",
    responses((status = 200, description = "Loaded and not draining (also with a full queue)", body = Object), (status = 503, description = "Loading or draining", body = Object)))]
pub(super) async fn ready(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let (_, code, _) = readiness(&app);
    (code, Json(json!({ "ready": code == StatusCode::OK })))
}

/// A served model by name, and the version asked for (only [`VERSION`] exists).
fn model<'a>(app: &'a App, name: &str, version: Option<&str>) -> V2Result<&'a Slot> {
    let slot = app.slot(name).ok_or_else(|| ApiError::UnknownModel {
        name: name.to_owned(),
        served: app.slots.iter().map(|s| s.entry.name.clone()).collect(),
    })?;
    match version {
        Some(v) if v != VERSION => Err(V2Error(ApiError::UnknownModel {
            name: format!("{name} version {v}"),
            served: app
                .slots
                .iter()
                .map(|s| format!("{} version {VERSION}", s.entry.name))
                .collect(),
        })),
        _ => Ok(slot),
    }
}

/// `GET /v2/models/{name}[/versions/{version}]`: the model's inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "Open Inference Protocol",
    params(("name" = String, Path, description = "A served model (also under /versions/1)")),
    responses((status = 200, description = "Inputs, outputs, platform, versions and parameters", body = Object),
              (status = 404, description = "No such model or version", body = Object)))]
pub(super) async fn model_metadata(
    State(app): State<Arc<App>>,
    Path(path): Path<Vec<(String, String)>>,
) -> V2Result<Json<Value>> {
    let (name, version) = name_and_version(&path);
    let slot = model(&app, name, version)?;
    let mut metadata = json!({
        "name": slot.entry.name,
        "versions": [VERSION],
        // Its tensors are known once it is loaded.
        "platform": "", "inputs": [], "outputs": [], "parameters": {},
    });
    if let Some(model) = slot.loaded.get() {
        let d = model.description();
        let sources = super::v1::input_sources(&app, slot);
        metadata["platform"] = json!(d.platform);
        metadata["inputs"] = json!(model.v2_inputs(&sources));
        metadata["outputs"] = json!(d.v2_outputs);
        metadata["parameters"] = d.v2_parameters.clone();
    }
    Ok(Json(metadata))
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`: 200 once loaded, 503 while loading or
/// draining.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "Open Inference Protocol",
    params(("name" = String, Path, description = "A served model (also under /versions/1)")),
    responses((status = 200, body = Object), (status = 503, description = "Loading or draining", body = Object),
              (status = 404, description = "No such model or version", body = Object)))]
pub(super) async fn model_ready(
    State(app): State<Arc<App>>,
    Path(path): Path<Vec<(String, String)>>,
) -> V2Result<(StatusCode, Json<Value>)> {
    let (name, version) = name_and_version(&path);
    let slot = model(&app, name, version)?;
    let ready = slot.loaded.get().is_some() && !app.draining.load(Ordering::SeqCst);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((
        code,
        Json(json!({"name": name, "versions": [VERSION], "ready": ready})),
    ))
}

/// The `{name}` and optional `{version}` of a v2 model path.
fn name_and_version(path: &[(String, String)]) -> (&str, Option<&str>) {
    let get = |k: &str| path.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    (get("name").unwrap_or_default(), get("version"))
}

/// A v2 inference request's JSON part.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferenceRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The binary tensor extension's layout: little-endian elements, `BYTES` as a 4-byte length
/// before each element.
fn binary_layout(tensor: &Tensor) -> Vec<u8> {
    match tensor {
        Tensor::Bytes(items) => items
            .iter()
            .flat_map(|b| (b.len() as u32).to_le_bytes().into_iter().chain(b.clone()))
            .collect(),
        Tensor::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Tensor::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Tensor::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The JSON `data` array (row-major, flattened). Bytes that are not UTF-8 cannot be JSON.
fn json_data<'a>(tensor: &'a Tensor, name: &str) -> V2Result<JsonData<'a>> {
    Ok(match tensor {
        Tensor::Bytes(items) => JsonData::Strings(
            items
                .iter()
                .map(|b| {
                    std::str::from_utf8(b).map_err(|_| {
                        invalid(format!(
                            "output {name} holds bytes that are not UTF-8; ask for it with \
                                 parameters.binary_data = true"
                        ))
                    })
                })
                .collect::<V2Result<_>>()?,
        ),
        Tensor::Fp32(v) => JsonData::Fp32(v),
        Tensor::Fp64(v) => JsonData::Fp64(v),
        Tensor::Int32(v) => JsonData::Int32(v),
    })
}

/// A tensor's JSON `data`, serialised from the values themselves (an `f32` in its shortest
/// form, not widened to `f64` digits).
#[derive(Serialize)]
#[serde(untagged)]
enum JsonData<'a> {
    Strings(Vec<&'a str>),
    Fp32(&'a [f32]),
    Fp64(&'a [f64]),
    Int32(&'a [i32]),
}

/// The JSON part of a response.
#[derive(Serialize)]
struct ResponseHead<'a> {
    model_name: &'a str,
    model_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputHead<'a>>,
}

/// One output in the JSON part: its data, or the size of its binary data after the JSON.
#[derive(Serialize)]
struct OutputHead<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

/// `POST /v2/models/{name}[/versions/{version}]/infer`.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "Open Inference Protocol",
    request_body(content = Object, description = "An inference request: JSON tensors, or with Inference-Header-Content-Length the JSON part followed by binary tensors", content_type = "application/json"),
    params(
        ("name" = String, Path, description = "A served model (also under /versions/1)"),
        ("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes"),
        ("inference-header-content-length" = Option<u64>, Header, description = "Length of the JSON part when binary tensors follow it"),
    ),
    responses(
        (status = 200, description = "The outputs asked for, JSON or binary", body = Object),
        (status = 400, description = "A malformed request or tensor", body = Object),
        (status = 404, description = "No such model, or an input file that does not exist", body = Object),
        (status = 413, description = "Body or input too large", body = Object),
        (status = 422, description = "Undecodable audio, unknown language, a path that is not a regular file", body = Object),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = Object),
        (status = 504, description = "Deadline passed", body = Object),
    ))]
pub(super) async fn infer_v2(
    State(app): State<Arc<App>>,
    Path(path): Path<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> V2Result<Response> {
    let (body, deadline) = accept(&app, &headers, body)?;
    let (name, version) = name_and_version(&path);
    let slot = model(&app, name, version)?;
    let header = headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("?"));
    let (request, inputs) = decode(header, &body)?;
    let [(input_name, shape, elements)] = <[_; 1]>::try_from(inputs).map_err(|inputs| {
        invalid(format!(
            "model {name:?} takes exactly one input tensor; got {}",
            inputs.len()
        ))
    })?;
    check_count(&app, elements.len(), "inputs")?;
    let model = loaded(&app, slot)?;
    let parameters: Map<String, Value> = request
        .parameters
        .iter()
        .filter(|(k, _)| !is_protocol_parameter(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let outputs = model
        .infer_tensor(&app, (&input_name, &shape, elements), parameters, deadline)
        .await?;
    respond(&request, slot, outputs)
}

/// Request parameters the protocol itself defines, which no model reads.
fn is_protocol_parameter(key: &str) -> bool {
    matches!(
        key,
        "binary_data_output"
            | "timeout"
            | "priority"
            | "sequence_id"
            | "sequence_start"
            | "sequence_end"
    )
}

/// An input tensor as decoded: its name, shape and elements.
type DecodedInput = (String, Vec<i64>, Vec<Vec<u8>>);

/// A request's tensors, each checked against its shape and datatype, from its body and its
/// `Inference-Header-Content-Length` (`header`): what inference on every model starts from.
fn decode(header: Option<&str>, body: &[u8]) -> V2Result<(InferenceRequest, Vec<DecodedInput>)> {
    let (request, mut binary) = split_body(header, body)?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let elements = elements(input, &mut binary)?;
        inputs.push((input.name.clone(), input.shape.clone(), elements));
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes after the last binary input: the inputs' binary_data_size do not add up \
             to the body",
            binary.len()
        )));
    }
    Ok((request, inputs))
}

/// Decodes a v2 request body as the inference route does before any model is involved: the number of
/// input elements, or the error the request would be answered with (for the fuzz targets).
pub fn decode_request(header: Option<&str>, body: &[u8]) -> Result<usize, ApiError> {
    decode(header, body)
        .map(|(_, inputs)| inputs.iter().map(|(_, _, e)| e.len()).sum())
        .map_err(|e| e.0)
}

/// The JSON part of a body and the binary part after it, by `Inference-Header-Content-Length`.
fn split_body<'a>(header: Option<&str>, body: &'a [u8]) -> V2Result<(InferenceRequest, &'a [u8])> {
    let json_len = match header {
        None => body.len(),
        Some(v) => Some(v)
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                V2Error(ApiError::InvalidHeader(format!(
                    "Inference-Header-Content-Length must be a whole number of bytes no larger \
                     than the body ({} bytes)",
                    body.len()
                )))
            })?,
    };
    let request: InferenceRequest = parse_json(&body[..json_len])?;
    Ok((request, &body[json_len..]))
}

/// An input's elements: its `data` (JSON), or its share of the binary part (taken off the
/// front of `binary`). Only `BYTES` inputs are taken: every model here reads texts or files.
fn elements(input: &RequestInput, binary: &mut &[u8]) -> V2Result<Vec<Vec<u8>>> {
    let name = &input.name;
    if input.datatype != "BYTES" {
        return Err(invalid(format!(
            "input {name:?} is {}; this server's models take BYTES inputs",
            input.datatype
        )));
    }
    let count = input.shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    });
    let Some(count) = count else {
        return Err(invalid(format!(
            "input {name:?} has shape {:?}; dimensions must be whole numbers",
            input.shape
        )));
    };
    let elements = match (input.parameters.get("binary_data_size"), &input.data) {
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "input {name:?}: binary_data_size must be a whole number"
                    ))
                })?;
            if size > binary.len() {
                return Err(invalid(format!(
                    "input {name:?}: binary_data_size is {size} but only {} bytes of binary data are left",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            split_bytes(name, mine)?
        }
        (None, Some(data)) => {
            let mut out = Vec::new();
            flatten_strings(name, data, &mut out)?;
            out
        }
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "input {name:?} has both data and binary_data_size; send one"
            )))
        }
        (None, None) => return Err(invalid(format!("input {name:?} has no data"))),
    };
    if elements.len() != count {
        return Err(invalid(format!(
            "input {name:?} has shape {:?} ({count} elements) but {} elements of data",
            input.shape,
            elements.len()
        )));
    }
    Ok(elements)
}

/// The elements of a binary `BYTES` tensor: each a 4-byte little-endian length, then its bytes.
fn split_bytes(name: &str, mut data: &[u8]) -> V2Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let truncated = || {
            invalid(format!(
                "input {name:?}: its binary BYTES data is truncated"
            ))
        };
        let (len, rest) = data.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(truncated());
        }
        out.push(rest[..len].to_vec());
        data = &rest[len..];
    }
    Ok(out)
}

/// The strings of a JSON `BYTES` tensor, nested arrays flattened in row-major order.
fn flatten_strings(name: &str, data: &Value, out: &mut Vec<Vec<u8>>) -> V2Result<()> {
    match data {
        Value::String(s) => out.push(s.clone().into_bytes()),
        Value::Array(items) => {
            for item in items {
                flatten_strings(name, item, out)?;
            }
        }
        other => {
            return Err(invalid(format!(
                "input {name:?}: BYTES data must be strings, not {other}"
            )))
        }
    }
    Ok(())
}

/// The outputs a request asks for (all when it names none), each with whether it goes binary.
fn wanted<'a>(
    request: &'a InferenceRequest,
    outputs: &[NamedTensor],
) -> V2Result<Vec<(&'a str, bool)>> {
    let all_binary = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(asked) = &request.outputs else {
        return Ok(outputs.iter().map(|o| (o.name, all_binary)).collect());
    };
    asked
        .iter()
        .map(|o| {
            if !outputs.iter().any(|t| t.name == o.name) {
                let names: Vec<&str> = outputs.iter().map(|t| t.name).collect();
                return Err(invalid(format!(
                    "no output named {:?}; this model's outputs are {}",
                    o.name,
                    names.join(", ")
                )));
            }
            let binary = o
                .parameters
                .get("binary_data")
                .and_then(Value::as_bool)
                .unwrap_or(all_binary);
            Ok((o.name.as_str(), binary))
        })
        .collect()
}

/// The response: the outputs asked for, each as JSON or binary as asked, with the binary ones
/// after the JSON part.
fn respond(
    request: &InferenceRequest,
    slot: &Slot,
    outputs: Vec<NamedTensor>,
) -> V2Result<Response> {
    let wanted = wanted(request, &outputs)?;
    let mut blobs = Vec::new();
    let mut tensors = Vec::new();
    for (name, binary) in wanted {
        let tensor = outputs
            .iter()
            .find(|t| t.name == name)
            .expect("checked above");
        let mut out = OutputHead {
            name,
            datatype: tensor.data.datatype(),
            shape: &tensor.shape,
            parameters: None,
            data: None,
        };
        if binary {
            let blob = binary_layout(&tensor.data);
            out.parameters = Some(json!({ "binary_data_size": blob.len() }));
            blobs.push(blob);
        } else {
            out.data = Some(json_data(&tensor.data, name)?);
        }
        tensors.push(out);
    }
    let head = ResponseHead {
        model_name: &slot.entry.name,
        model_version: VERSION,
        id: request.id.as_deref(),
        outputs: tensors,
    };
    let head = serde_json::to_vec(&head).map_err(|e| V2Error(ApiError::internal(e)))?;
    if blobs.is_empty() {
        return Ok(([(CONTENT_TYPE, "application/json")], head).into_response());
    }
    let length = head.len();
    let mut body = head;
    blobs.iter().for_each(|b| body.extend_from_slice(b));
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                axum::http::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(length),
            ),
        ],
        body,
    )
        .into_response())
}
