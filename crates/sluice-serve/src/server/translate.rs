//! `POST /translation`: the contract route (`docs/CONTRACT.md`) on the first translation model,
//! run like any `/v1` request with the payload's records as text inputs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use sluice_models::service::{InferInput, Parameters, Spelling};

use super::served::loaded;
use super::submit::{accept, check_count};
use super::App;
use crate::api::{
    parse_json, ErrorBody, Payload, RecordOut, TranslationRequest, TranslationResponse,
};
use crate::error::ApiError;

/// Translate records from one language to another.
#[utoipa::path(
    post,
    path = "/translation",
    request_body = TranslationRequest,
    params(("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes")),
    responses(
        (status = 200, description = "One result per record, in request order", body = TranslationResponse),
        (status = 400, description = "Malformed JSON or missing fields", body = ErrorBody),
        (status = 413, description = "Body too large or too many records", body = ErrorBody),
        (status = 422, description = "Unknown language, text too long or setting out of range", body = ErrorBody),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody),
    )
)]
pub(super) async fn translation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TranslationResponse>, ApiError> {
    let (body, deadline) = accept(&app, &headers, body)?;
    let request: TranslationRequest = parse_json(&body)?;
    let payload = request.payload;
    check_count(&app, payload.records.len(), "records")?;
    let Some(slot) = app.translation_slot() else {
        return Err(ApiError::NoTranslationModel);
    };
    let model = loaded(&app, slot)?;
    let (inputs, parameters) = as_inputs(payload);
    let outputs = model
        .infer(&app, inputs, parameters, Spelling::Payload, deadline)
        .await?;
    let result = outputs
        .into_iter()
        .map(|o| RecordOut {
            id: o.id,
            text: o.text.unwrap_or_default(),
        })
        .collect();
    Ok(Json(TranslationResponse { result }))
}

/// The payload's records as text inputs and its settings as `/v1` parameters.
fn as_inputs(payload: Payload) -> (Vec<InferInput>, Parameters) {
    let inputs = payload
        .records
        .into_iter()
        .map(|r| InferInput {
            id: r.id,
            text: Some(r.text),
            ..InferInput::default()
        })
        .collect();
    let mut parameters = Parameters::new();
    parameters.insert("fromLang".into(), payload.from_lang.into());
    parameters.insert("toLang".into(), payload.to_lang.into());
    if let Some(b) = payload.beams {
        parameters.insert("beams".into(), b.into());
    }
    if let Some(n) = payload.max_new_tokens {
        parameters.insert("maxNewTokens".into(), n.into());
    }
    (inputs, parameters)
}
