//! `/v1/models`: what the server serves, and `/v1/models/{name}/infer` on any of them (inline
//! data, paths confined to the data volume, or object-storage URLs).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use sluice_models::service::{InputKind, Spelling};

use super::served::loaded;
use super::submit::{accept, check_count};
use super::{App, Slot};
use crate::api::{parse_json, ErrorBody};
use crate::error::ApiError;
use crate::infer::{InferRequest, InferResponse, ModelInfo};

/// Run a model on inline data or on files from the data volume or object storage.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/infer",
    request_body = InferRequest,
    params(
        ("name" = String, Path, description = "A model listed by GET /v1/models"),
        ("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes"),
    ),
    responses(
        (status = 200, description = "One output per input, in input order", body = InferResponse),
        (status = 400, description = "Malformed JSON, an input with not exactly one source, a malformed path", body = ErrorBody),
        (status = 403, description = "A path resolving outside the data root, a URL outside the allowed prefixes", body = ErrorBody),
        (status = 404, description = "Unknown model, or an input file that does not exist", body = ErrorBody),
        (status = 413, description = "Body or input file too large", body = ErrorBody),
        (status = 422, description = "Undecodable audio, unknown language, text that is not UTF-8, a path that is not a regular file", body = ErrorBody),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody),
    )
)]
pub(super) async fn infer(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    let (body, deadline) = accept(&app, &headers, body)?;
    let Some(slot) = app.slot(&name) else {
        return Err(ApiError::UnknownModel {
            name,
            served: app.slots.iter().map(|s| s.entry.name.clone()).collect(),
        });
    };
    let request: InferRequest = parse_json(&body)?;
    check_count(&app, request.inputs.len(), "inputs")?;
    app.inputs.check(&request.inputs)?;
    let model = loaded(&app, slot)?;
    let outputs = model
        .infer(
            &app,
            request.inputs,
            request.parameters,
            Spelling::Http,
            deadline,
        )
        .await?;
    Ok(Json(InferResponse {
        model: name,
        labels: model.description().labels.clone(),
        outputs,
    }))
}

/// The input sources a model takes on this server: inline text (text models) and data, then
/// paths and URLs where the server allows them.
pub(super) fn input_sources(app: &App, slot: &Slot) -> Vec<&'static str> {
    let text = match slot.loaded.get() {
        Some(m) => m.description().input == InputKind::Text,
        None => slot.entry.kind == sluice_models::service::translation::KIND_NAME,
    };
    let mut v = if text {
        vec!["text", "data"]
    } else {
        vec!["data"]
    };
    if app.inputs.data_root.is_some() {
        v.push("path");
    }
    if !app.inputs.url_prefixes.is_empty() {
        v.push("url");
    }
    v
}

/// The models this server serves, with what each takes.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = [ModelInfo])))]
pub(super) async fn list_models(State(app): State<Arc<App>>) -> Json<Vec<ModelInfo>> {
    let infos = app
        .slots
        .iter()
        .map(|slot| {
            let description = slot.loaded.get().map(|m| m.description());
            let (parameters, input_kind) = match description {
                Some(d) => (d.parameters.clone(), d.input.as_str()),
                // Until it is loaded, a model is what its source suggests.
                None if slot.kind() == sluice_models::service::translation::KIND_NAME => (
                    sluice_models::service::translation::parameter_docs(
                        sluice_models::service::Spelling::Http,
                    ),
                    "text",
                ),
                None => (serde_json::json!({}), "audio"),
            };
            ModelInfo {
                name: slot.entry.name.clone(),
                kind: slot.kind().to_owned(),
                status: if slot.loaded.get().is_some() {
                    "ready"
                } else {
                    "loading"
                }
                .to_owned(),
                source: slot.entry.source.clone(),
                inputs: input_sources(&app, slot)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                input_kind: input_kind.to_owned(),
                parameters,
                details: description.map(|d| d.details.clone()),
            }
        })
        .collect();
    Json(infos)
}
