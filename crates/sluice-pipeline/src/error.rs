//! The errors the engine's public calls return: a sink's, and a run's. Sinks of every kind and
//! the run itself share them, so they live apart from any one of them.

use crate::RunSummary;

/// A sink could not write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An item could not be encoded, or an existing output could not be read back.
    #[error("{0}")]
    Encode(String),
}

impl SinkError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SinkError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A run that could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The options or the pipeline do not fit this machine.
    #[error("{0}")]
    Invalid(String),
    /// The run stopped early; the summary says what was done.
    #[error("run aborted: {reason}")]
    Aborted {
        /// Why.
        reason: String,
        /// What was done before it stopped.
        summary: Box<RunSummary>,
    },
    /// The sink failed when the run started.
    #[error(transparent)]
    Sink(#[from] SinkError),
}
