//! The one error type of the models crate: every variant names the thing, the reason and the fix.

use std::path::PathBuf;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A required file is not in the model directory.
    #[error("{dir} has no {file}: {hint}")]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// The file that was looked for.
        file: String,
        /// What to do about it.
        hint: String,
    },
    /// The model directory does not exist or is not a directory.
    #[error("model directory {0} does not exist (pass a directory in the Hugging Face layout or a hub id such as facebook/m2m100_418M)")]
    NoSuchDirectory(PathBuf),
    /// A config or vocabulary file could not be read or parsed.
    #[error("{path}: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// Why it is invalid.
        reason: String,
    },
    /// The config describes another architecture.
    #[error("{path} describes a {found:?} model, not M2M100 (model_type \"m2m_100\"); Sluice's translation engine only runs M2M100 checkpoints")]
    NotM2M100 {
        /// The config.json read.
        path: PathBuf,
        /// The model_type found.
        found: String,
    },
    /// A language code the model does not know.
    #[error("unknown language code {code:?}{}; M2M100 knows these {} codes: {}", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default(), known.len(), known.join(", "))]
    UnknownLanguage {
        /// The code given.
        code: String,
        /// The closest valid code, if any is close.
        suggestion: Option<String>,
        /// Every valid code.
        known: Vec<&'static str>,
    },
    /// The Hugging Face hub could not be reached or did not have the file.
    #[error("could not get {file} of {repo} from the Hugging Face hub: {reason}. {hint}")]
    Hub {
        /// The hub repository id.
        repo: String,
        /// The file asked for.
        file: String,
        /// The underlying failure.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// Invalid generation settings.
    #[error("invalid generation settings: {0}")]
    InvalidSettings(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The ONNX runtime failed on a graph.
    #[error("onnx: {0}")]
    Onnx(String),
    /// A tensor operation failed (shape mismatch, missing weight, ...).
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    /// An I/O error with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Whether trying again cannot help: the model, its files, its settings or the hub's answer
    /// would be the same next time. I/O and tensor errors (a full disk, device memory) may pass.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ModelError::Candle(_) | ModelError::Io { .. })
    }

    /// Wraps an I/O error with the path it concerned.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
