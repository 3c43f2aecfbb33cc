//! Every answer the server gives instead of a result: one enum, each case with its HTTP status
//! and its stable code, turned into the JSON error body (and `Retry-After`) in one place.
//!
//! Handlers and the code they call return these typed errors; only [`ApiError::into_response`]
//! knows about the wire format, so a case cannot get a status in one route and another status
//! elsewhere.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_core::confine::PathError;
use sluice_core::storage::StorageError;

use sluice_models::service::{self, ServiceError, Spelling};

use crate::batcher::BackendError;

/// Body of every error answer.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A machine-readable code and a message for people.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unknown_language`, `overloaded`.
    pub code: String,
    /// What happened and, where possible, what to do.
    pub message: String,
}

/// Why a request got no result.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body could not be read.
    #[error("{0}")]
    InvalidBody(String),
    /// The body is over the size limit.
    #[error("the request body is larger than {limit} bytes; send fewer records per request")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Malformed JSON or a field of the wrong type, named by its path.
    #[error("{0}")]
    InvalidRequest(String),
    /// A header with a value the server cannot use.
    #[error("{0}")]
    InvalidHeader(String),
    /// More records or inputs in one request than allowed.
    #[error("{count} {what} in one request; the limit is {max}: split the request")]
    TooManyItems {
        /// How many were sent.
        count: usize,
        /// `records` or `inputs`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// No route at this path.
    #[error("no such route; GET /openapi.json lists the routes")]
    NoRoute,
    /// The route takes another method.
    #[error("method not allowed on this route; GET /openapi.json lists the routes")]
    MethodNotAllowed,
    /// `/translation` on a server that serves no translation model.
    #[error("this server serves no translation model; GET /v1/models lists what it serves")]
    NoTranslationModel,
    /// A model name this server does not serve.
    #[error("no model named {name:?}; this server serves: {}", served.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names served.
        served: Vec<String>,
    },
    /// `parameters` of a `/v1` request that the model cannot take.
    #[error("{0}")]
    InvalidParameters(String),
    /// A decoding setting out of its range.
    #[error("{field} is {value}; it must be between 1 and {max}")]
    ParameterOutOfRange {
        /// The field as the route spells it, e.g. `payload.beams`.
        field: String,
        /// What was sent.
        value: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// A language code the model does not know.
    #[error(
        "unknown language code \"{code}\" in {field}{}; the valid codes (also in GET \
         /openapi.json) are: {}",
        suggestion.as_ref().map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default(),
        valid.join(", ")
    )]
    UnknownLanguage {
        /// The setting as the route spells it, e.g. `payload.fromLang`.
        field: String,
        /// The code sent.
        code: String,
        /// The closest valid code, when one is close.
        suggestion: Option<String>,
        /// Every valid code.
        valid: Vec<String>,
    },
    /// A record over the token limit.
    #[error(
        "{what}[{index}] (id \"{id}\") is {tokens} tokens long; the limit is {max} tokens per \
         record: split the text"
    )]
    TextTooLong {
        /// Where the records are: `payload.records` or `inputs`.
        what: &'static str,
        /// The record's position.
        index: usize,
        /// Its id.
        id: String,
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        max: usize,
    },
    /// One input of a `/v1` request is unusable.
    #[error("inputs[{index}] (id \"{id}\"): {problem}")]
    Input {
        /// The input's position.
        index: usize,
        /// Its id.
        id: String,
        /// What is wrong with it (boxed: it is the largest case).
        problem: Box<InputProblem>,
    },
    /// The model is still loading.
    #[error("model {name} is still loading; retry shortly")]
    ModelLoading {
        /// The model.
        name: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The queue has no room for the request.
    #[error("{reason}; retry after the Retry-After delay")]
    Overloaded {
        /// Why it was refused.
        reason: String,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The server is draining.
    #[error("the server is shutting down; retry on another replica")]
    ShuttingDown {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The request's deadline passed.
    #[error("the request's deadline passed before its translations were ready")]
    DeadlineExceeded,
    /// The server takes API keys and the request had no accepted one.
    #[error("{}", if *presented {
        "the API key is not accepted"
    } else {
        "this server needs an API key: send Authorization: Bearer <key>"
    })]
    Unauthorized {
        /// A key was sent (and refused), rather than none.
        presented: bool,
    },
    /// The caller sent more requests than its rate allows.
    #[error("too many requests from this caller; retry after the Retry-After delay")]
    RateLimited {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The model gave no output for one of the request's items.
    #[error("{0}")]
    Model(BackendError),
    /// Something that should not happen (a task that panicked, a tokenizer failure).
    #[error("{0}")]
    Internal(String),
}

/// What is wrong with one input of a `/v1` request.
#[derive(Debug, thiserror::Error)]
pub enum InputProblem {
    /// Not exactly one of text, data, path or url.
    #[error("give exactly one of text, data, path or url ({0} given)")]
    NotOneSource(usize),
    /// A kind of input the model does not take.
    #[error("{0}")]
    WrongKind(&'static str),
    /// A path on a server started without `--data-root`.
    #[error(
        "path \"{0}\" is refused: this server takes path inputs only when started with \
         --data-root; send the bytes as data instead"
    )]
    PathsDisabled(String),
    /// A path that cannot be read from the data volume.
    #[error("{0}")]
    Path(PathError),
    /// A URL outside the allowed prefixes.
    #[error("{0}")]
    UrlRefused(String),
    /// A URL that cannot be read.
    #[error("url \"{url}\": {error}")]
    Storage {
        /// The URL.
        url: String,
        /// Why it cannot be read.
        error: StorageError,
    },
    /// `data` that is not base64.
    #[error("data is not valid base64: {0}")]
    InvalidData(String),
    /// An input over the size limit.
    #[error("url \"{url}\" is {bytes} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: u64,
    },
    /// Bytes for a text model that are not UTF-8.
    #[error("the translation model takes UTF-8 text; this input is not")]
    NotUtf8,
    /// Audio that cannot be decoded.
    #[error("{0}")]
    InvalidAudio(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidBody(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidHeader(_)
            | ApiError::InvalidParameters(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyItems { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::NoRoute | ApiError::NoTranslationModel | ApiError::UnknownModel { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ParameterOutOfRange { .. }
            | ApiError::UnknownLanguage { .. }
            | ApiError::TextTooLong { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Input { problem, .. } => problem.status(),
            ApiError::ModelLoading { .. }
            | ApiError::Overloaded { .. }
            | ApiError::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Model(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::BodyTooLarge { .. } => "payload_too_large",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidHeader(_) => "invalid_header",
            ApiError::TooManyItems { .. } => "too_many_records",
            ApiError::NoRoute => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::NoTranslationModel => "no_translation_model",
            ApiError::UnknownModel { .. } => "unknown_model",
            ApiError::InvalidParameters(_) => "invalid_parameters",
            ApiError::ParameterOutOfRange { .. } => "invalid_parameter",
            ApiError::UnknownLanguage { .. } => "unknown_language",
            ApiError::TextTooLong { .. } => "text_too_long",
            ApiError::Input { problem, .. } => problem.code(),
            ApiError::ModelLoading { .. } => "model_loading",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::ShuttingDown { .. } => "shutting_down",
            ApiError::DeadlineExceeded => "deadline_exceeded",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Model(_) => "model_error",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Seconds for the `Retry-After` header (503 and 429 answers).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::ModelLoading { retry_after, .. }
            | ApiError::Overloaded { retry_after, .. }
            | ApiError::ShuttingDown { retry_after }
            | ApiError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// An unexpected failure, with its message.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    /// The answer to a model service's refusal, for a request whose inputs have `ids` and whose
    /// settings are spelled `spelling`: the one place service errors become HTTP.
    pub fn from_service(e: ServiceError, ids: &[String], spelling: Spelling) -> Self {
        let id = |index: usize| ids.get(index).cloned().unwrap_or_default();
        match e {
            ServiceError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            ServiceError::InvalidParameters(m) => ApiError::InvalidParameters(m),
            ServiceError::ParameterOutOfRange { field, value, max } => {
                ApiError::ParameterOutOfRange { field, value, max }
            }
            ServiceError::UnknownLanguage {
                field,
                code,
                suggestion,
                valid,
            } => ApiError::UnknownLanguage {
                field: field.unwrap_or_default(),
                code,
                suggestion,
                valid,
            },
            ServiceError::TextTooLong { index, tokens, max } => ApiError::TextTooLong {
                what: match spelling {
                    Spelling::Payload => "payload.records",
                    _ => "inputs",
                },
                index,
                id: id(index),
                tokens,
                max,
            },
            ServiceError::Input { index, problem } => ApiError::Input {
                index,
                id: id(index),
                problem: Box::new(match problem {
                    service::InputProblem::NotUtf8 => InputProblem::NotUtf8,
                    service::InputProblem::WrongKind(m) => InputProblem::WrongKind(m),
                    service::InputProblem::InvalidAudio(m) => InputProblem::InvalidAudio(m),
                }),
            },
            ServiceError::Model(e) => ApiError::Model(BackendError::from(e)),
            ServiceError::Cancelled => ApiError::Internal("the request ended".into()),
        }
    }
}

/// The error of a request failing on input `i`, naming it.
pub fn bad_input(i: usize, input: &service::InferInput, problem: InputProblem) -> ApiError {
    ApiError::Input {
        index: i,
        id: input.id.clone(),
        problem: Box::new(problem),
    }
}

impl InputProblem {
    /// The HTTP status of a request failing on this input.
    pub fn status(&self) -> StatusCode {
        match self {
            InputProblem::NotOneSource(_)
            | InputProblem::WrongKind(_)
            | InputProblem::PathsDisabled(_)
            | InputProblem::InvalidData(_) => StatusCode::BAD_REQUEST,
            InputProblem::Path(e) => match e {
                PathError::Invalid { .. } => StatusCode::BAD_REQUEST,
                // A well-formed path naming something that cannot be read as an input.
                PathError::NotAFile { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                PathError::Escapes { .. } => StatusCode::FORBIDDEN,
                PathError::NotFound { .. } => StatusCode::NOT_FOUND,
                PathError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                PathError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            InputProblem::UrlRefused(_) => StatusCode::FORBIDDEN,
            InputProblem::Storage { error, .. } => match error {
                StorageError::NotFound { .. } => StatusCode::NOT_FOUND,
                StorageError::Invalid { .. } => StatusCode::BAD_REQUEST,
                StorageError::Store { .. } => StatusCode::BAD_GATEWAY,
            },
            InputProblem::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InputProblem::NotUtf8 | InputProblem::InvalidAudio(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        }
    }

    /// The stable code of a request failing on this input.
    pub fn code(&self) -> &'static str {
        match self {
            InputProblem::NotOneSource(_) | InputProblem::WrongKind(_) => "invalid_input",
            InputProblem::PathsDisabled(_) => "path_inputs_disabled",
            InputProblem::Path(e) => match e {
                PathError::Invalid { .. } => "invalid_path",
                PathError::Escapes { .. } => "path_outside_data_root",
                PathError::NotFound { .. } => "input_not_found",
                PathError::NotAFile { .. } => "not_a_file",
                PathError::TooLarge { .. } => "input_too_large",
                PathError::Io { .. } => "read_failed",
            },
            InputProblem::UrlRefused(_) => "url_refused",
            InputProblem::Storage { error, .. } => match error {
                StorageError::NotFound { .. } => "input_not_found",
                StorageError::Invalid { .. } => "invalid_url",
                StorageError::Store { .. } => "storage_error",
            },
            InputProblem::InvalidData(_) => "invalid_data",
            InputProblem::TooLarge { .. } => "input_too_large",
            InputProblem::NotUtf8 => "not_utf8",
            InputProblem::InvalidAudio(_) => "invalid_audio",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let unauthorized = matches!(self, ApiError::Unauthorized { .. });
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_goes_with_every_503_and_429_and_only_with_them() {
        let cases = [
            ApiError::ModelLoading {
                name: "m".into(),
                retry_after: 3,
            },
            ApiError::Overloaded {
                reason: "queue full".into(),
                retry_after: 3,
            },
            ApiError::ShuttingDown { retry_after: 3 },
            ApiError::RateLimited { retry_after: 3 },
            ApiError::Unauthorized { presented: false },
            ApiError::DeadlineExceeded,
            ApiError::NoRoute,
            ApiError::Model(BackendError::Panicked),
        ];
        for e in cases {
            let unavailable = e.status() == StatusCode::SERVICE_UNAVAILABLE
                || e.status() == StatusCode::TOO_MANY_REQUESTS;
            assert_eq!(e.retry_after().is_some(), unavailable, "{e:?}");
            let resp = e.into_response();
            assert_eq!(
                resp.headers().contains_key(header::RETRY_AFTER),
                unavailable
            );
        }
    }

    #[test]
    fn an_input_problem_names_the_input_and_keeps_its_own_status() {
        let e = ApiError::Input {
            index: 2,
            id: "a".into(),
            problem: Box::new(InputProblem::NotUtf8),
        };
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code(), "not_utf8");
        assert_eq!(
            e.to_string(),
            "inputs[2] (id \"a\"): the translation model takes UTF-8 text; this input is not"
        );
    }
}
