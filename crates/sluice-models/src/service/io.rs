//! What goes into and comes out of a model service, in the shapes both sides of the wire share:
//! the server answers `/v1` with these types and the remote `model` stage reads them back, so
//! the two cannot drift apart. With the `openapi` feature they also describe themselves to the
//! server's OpenAPI document.

use serde::{Deserialize, Serialize};

/// Request-wide settings of a model (translation: the languages and decoding settings).
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// `POST /v1/models/{name}/infer` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// The inputs; outputs come back in this order.
    pub inputs: Vec<InferInput>,
    /// Model settings shared by every input (translation: `fromLang`, `toLang`, `beams`,
    /// `maxNewTokens`; audio classifiers take none).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub parameters: Parameters,
}

/// One input: an id and exactly one of `text`, `data`, `path` or `url`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InferInput {
    /// Caller's id, echoed in the output.
    pub id: String,
    /// Inline text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub text: Option<String>,
    /// Inline bytes, base64 (standard alphabet, padded).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub data: Option<String>,
    /// A file relative to the server's `--data-root`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub path: Option<String>,
    /// An object-storage URL under one of the server's `--allow-url` prefixes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_string"
    )]
    pub url: Option<String>,
}

/// A source field that is there must be a string: `null` is refused like any other non-string
/// rather than read as absent, as the OpenAPI document says.
fn present_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Some)
}

/// `POST /v1/models/{name}/infer` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InferResponse {
    /// The model that answered.
    pub model: String,
    /// For classifiers: the label of each column of `scores`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// One output per input, in input order.
    pub outputs: Vec<InferOutput>,
}

/// The result for one input.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InferOutput {
    /// The input's id.
    pub id: String,
    /// Translation: the translated text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Audio: the decoded duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Audio classifiers: one entry per window, in time order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<WindowScores>>,
}

/// A classifier's scores for one window.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowScores {
    /// Start, seconds from the beginning of the audio.
    pub start: f64,
    /// End, seconds (clipped to the audio's end).
    pub end: f64,
    /// The highest-scoring label.
    pub label: String,
    /// Its score.
    pub score: f32,
    /// One score per label, in the order of `labels`.
    pub scores: Vec<f32>,
}

/// The elements of a tensor, flattened row-major, as the Open Inference Protocol types them.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    /// `BYTES`: one byte string per element.
    Bytes(Vec<Vec<u8>>),
    /// `FP32`.
    Fp32(Vec<f32>),
    /// `FP64`.
    Fp64(Vec<f64>),
    /// `INT32`.
    Int32(Vec<i32>),
}

impl Tensor {
    /// The protocol's name of the element type.
    pub fn datatype(&self) -> &'static str {
        match self {
            Tensor::Bytes(_) => "BYTES",
            Tensor::Fp32(_) => "FP32",
            Tensor::Fp64(_) => "FP64",
            Tensor::Int32(_) => "INT32",
        }
    }
}

/// An output tensor: its name, shape and elements.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The output's name.
    pub name: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: Tensor,
}

/// A tensor a model takes or gives, as `GET /v2/models/{name}` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: &'static str,
    /// Its element type (`BYTES`, `FP32`, ...).
    pub datatype: &'static str,
    /// Its shape, `-1` where any length goes.
    pub shape: Vec<i64>,
}

impl TensorInfo {
    /// A tensor named `name` of `datatype` and `shape`.
    pub fn new(name: &'static str, datatype: &'static str, shape: &[i64]) -> Self {
        Self {
            name,
            datatype,
            shape: shape.to_vec(),
        }
    }
}
