//! Wire types of the HTTP surface, the JSON error body every route answers with
//! ([`crate::error::ApiError`] fills it).
//!
//! The translation types follow `docs/CONTRACT.md` field for field; the optional generation settings
//! sit inside `payload` next to the contract's fields, so contract clients are unaffected.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
pub use crate::error::{ErrorBody, ErrorDetail};

/// `POST /translation` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TranslationRequest {
    /// What to translate.
    pub payload: Payload,
}

/// The records and languages of one translation request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// Source language code (an M2M100 code such as `en`).
    #[schema(example = "en")]
    pub from_lang: String,
    /// Target language code.
    #[schema(example = "ja")]
    pub to_lang: String,
    /// Texts to translate; results come back in this order.
    pub records: Vec<RecordIn>,
    /// Beams for beam search (1 = greedy); defaults to the model's generation config.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    pub beams: Option<usize>,
    /// Most tokens generated per record; defaults to the model's generation config.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_number"
    )]
    pub max_new_tokens: Option<usize>,
}

/// A whole number as JSON Schema's `integer` has it: `6` or `6.0`, not `6.5` or `-1`.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return usize::try_from(u).map(Some).map_err(D::Error::custom);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= usize::MAX as f64 => Ok(Some(f as usize)),
        _ => Err(D::Error::custom(format!(
            "invalid value: {n}, expected a whole number"
        ))),
    }
}

/// One text to translate.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RecordIn {
    /// Caller's id, echoed in the result (duplicates allowed).
    #[schema(example = "123")]
    pub id: String,
    /// The text; empty text translates to empty text.
    #[schema(example = "Life is like a box of chocolates.")]
    pub text: String,
}

/// `POST /translation` answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TranslationResponse {
    /// One entry per record, in request order.
    pub result: Vec<RecordOut>,
}

/// One translated record.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
pub struct RecordOut {
    /// The record's id.
    pub id: String,
    /// The translation.
    pub text: String,
}

/// `GET /healthz` and `GET /readyz` answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `alive`, `ready`, `saturated` (ready, a queue full), `loading` or `draining`.
    pub status: String,
    /// Items queued or being computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<usize>,
    /// Items the queue holds at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
}

/// Parses a JSON body, naming the field at fault (`payload.records[2].id: ...`) on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        let message = if path == "." || path.is_empty() {
            format!("{what}: {inner}")
        } else {
            format!("{what} at {path}: {inner}")
        };
        ApiError::InvalidRequest(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse_json::<TranslationRequest>(
            br#"{"payload":{"fromLang":"en","toLang":"ja","records":[{"id":1,"text":"a"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), "invalid_request");
        let m = e.to_string();
        assert!(m.contains("payload.records[0].id"), "{m}");
        let e = parse_json::<TranslationRequest>(br#"{"payload":{"fromLang":"en""#).unwrap_err();
        assert!(e.to_string().starts_with("malformed JSON"), "{e}");
        let e = parse_json::<TranslationRequest>(br#"{"payload":{"fromLang":"en","toLang":"ja"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("missing field `records`"), "{e}");
    }
}
