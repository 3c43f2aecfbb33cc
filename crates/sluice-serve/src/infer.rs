//! The model-agnostic surface: `POST /v1/models/{name}/infer` and `GET /v1/models`.
//!
//! An input names its content one of four ways: `text` inline, `data` (base64 bytes) inline,
//! `path` relative to the server's `--data-root` (read through [`DataRoot`], never outside it),
//! or `url` in object storage under a prefix the server was told to allow. Pipelines on a shared
//! volume send paths and so avoid shipping audio over the network; the others send data.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sluice_core::confine::DataRoot;
use sluice_core::storage::{Location, StorageError};
pub use sluice_models::service::io::{
    InferInput, InferOutput, InferRequest, InferResponse, WindowScores,
};
use sluice_models::service::{Content, InputKind};
use utoipa::ToSchema;

use crate::error::{bad_input, ApiError, InputProblem};

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// The name used in `/v1/models/{name}/infer`.
    pub name: String,
    /// `translation` or `audio-classifier`; empty while loading.
    pub kind: String,
    /// `loading`, `ready` or `failed`.
    pub status: String,
    /// Where it was loaded from (directory or hub id).
    pub source: String,
    /// What an input may carry: `text`, `data`, `path`, `url`.
    pub inputs: Vec<String>,
    /// What inputs hold: `text` or `audio`.
    pub input_kind: String,
    /// The `parameters` it takes, with a description each.
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    /// Kind-specific details (a classifier's sample rate, window, hop, labels, output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Where inputs may be read from besides the request body.
#[derive(Debug, Default)]
pub struct InputAccess {
    /// The volume `path` inputs are confined to.
    pub data_root: Option<DataRoot>,
    /// URL prefixes `url` inputs must start with.
    pub url_prefixes: Vec<String>,
    /// Object-store options (endpoint, credentials) on top of the environment's.
    pub storage_options: Vec<(String, String)>,
    /// Largest file read for one input, in bytes.
    pub max_input_bytes: u64,
}

impl InputAccess {
    /// Checks that each input names exactly one source, before any is read.
    pub fn check(&self, inputs: &[InferInput]) -> Result<(), ApiError> {
        for (i, input) in inputs.iter().enumerate() {
            let given = [
                input.text.is_some(),
                input.data.is_some(),
                input.path.is_some(),
                input.url.is_some(),
            ]
            .iter()
            .filter(|g| **g)
            .count();
            if given != 1 {
                return Err(bad_input(i, input, InputProblem::NotOneSource(given)));
            }
            if let Some(p) = &input.path {
                if self.data_root.is_none() {
                    return Err(bad_input(i, input, InputProblem::PathsDisabled(p.clone())));
                }
                DataRoot::check(p).map_err(|e| bad_input(i, input, InputProblem::Path(e)))?;
            }
            if let Some(u) = &input.url {
                self.check_url(u)
                    .map_err(|m| bad_input(i, input, InputProblem::UrlRefused(m)))?;
            }
        }
        Ok(())
    }

    fn check_url(&self, url: &str) -> Result<(), String> {
        if self.url_prefixes.is_empty() {
            return Err(format!(
                "url \"{url}\" is refused: this server takes url inputs only under prefixes \
                 given with --allow-url"
            ));
        }
        if url.contains("/../") || url.ends_with("/..") || url.contains('\0') {
            return Err(format!("url \"{url}\" is refused: \"..\" is not allowed"));
        }
        if !self
            .url_prefixes
            .iter()
            .any(|p| url.starts_with(p.as_str()))
        {
            return Err(format!(
                "url \"{url}\" is refused: it is not under an allowed prefix ({})",
                self.url_prefixes.join(", ")
            ));
        }
        Ok(())
    }

    /// One input's content as a model whose inputs are `kind` takes it (blocking: files and
    /// objects are read here): a path or URL for an audio model is opened to be read in chunks
    /// (no size limit; an object copied to a temporary file as it downloads), anything else is
    /// read whole, up to the byte limit.
    pub fn content(
        &self,
        i: usize,
        input: &InferInput,
        kind: InputKind,
    ) -> Result<Content, ApiError> {
        if kind == InputKind::Audio {
            refuse_text_for_audio(i, input)?;
            if let Some((file, name)) = self.open_file(i, input)? {
                return Ok(Content::Stream {
                    reader: Box::new(file),
                    name: Some(name),
                });
            }
        }
        self.read(i, input)
    }

    /// The file a `path` or `url` input names, opened, with its name; `None` for inline inputs.
    fn open_file(
        &self,
        i: usize,
        input: &InferInput,
    ) -> Result<Option<(std::fs::File, String)>, ApiError> {
        if let Some(p) = &input.path {
            let root = self.data_root.as_ref().expect("checked before reading");
            let file = root
                .open_file(p)
                .map_err(|e| bad_input(i, input, InputProblem::Path(e)))?;
            return Ok(Some((file, p.clone())));
        }
        let Some(url) = &input.url else {
            return Ok(None);
        };
        let file = Location::open_url_blocking(url, &self.storage_options).map_err(|error| {
            let url = url.to_owned();
            bad_input(i, input, InputProblem::Storage { url, error })
        })?;
        Ok(Some((file, url.clone())))
    }

    /// Reads one input's content whole (blocking: files and object storage are read here).
    fn read(&self, i: usize, input: &InferInput) -> Result<Content, ApiError> {
        if let Some(t) = &input.text {
            return Ok(Content::Text(t.clone()));
        }
        if let Some(d) = &input.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d)
                .map_err(|e| bad_input(i, input, InputProblem::InvalidData(e.to_string())))?;
            return Ok(Content::Bytes { bytes, name: None });
        }
        if let Some(p) = &input.path {
            let root = self.data_root.as_ref().expect("checked before reading");
            let bytes = root
                .read(p, self.max_input_bytes)
                .map_err(|e| bad_input(i, input, InputProblem::Path(e)))?;
            return Ok(Content::Bytes {
                bytes,
                name: Some(p.clone()),
            });
        }
        let url = input.url.as_deref().unwrap_or_default();
        let storage = |error: StorageError| {
            bad_input(
                i,
                input,
                InputProblem::Storage {
                    url: url.to_owned(),
                    error,
                },
            )
        };
        let bytes = Location::read_url_blocking(url, &self.storage_options).map_err(storage)?;
        if bytes.len() as u64 > self.max_input_bytes {
            return Err(bad_input(
                i,
                input,
                InputProblem::TooLarge {
                    url: url.to_owned(),
                    bytes: bytes.len(),
                    limit: self.max_input_bytes,
                },
            ));
        }
        Ok(Content::Bytes {
            bytes: bytes.to_vec(),
            name: Some(url.to_owned()),
        })
    }
}

/// Refuses a text input to an audio classifier.
pub fn refuse_text_for_audio(i: usize, input: &InferInput) -> Result<(), ApiError> {
    match input.text {
        Some(_) => Err(bad_input(
            i,
            input,
            InputProblem::WrongKind(sluice_models::service::classifier::TEXT_REFUSED),
        )),
        None => Ok(()),
    }
}
