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
    /// An item that cannot be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Writing an encoded part failed.
    #[error("writing: {0}")]
    Write(#[source] std::io::Error),
    /// The output format's encoder failed (Parquet, Arrow).
    #[error("{0}")]
    Encode(String),
    /// A record that does not fit its output (a missing key field, a field without a column, a
    /// value a column cannot hold) or an output without what the records need (a table, its key
    /// column): the message names which.
    #[error("{0}")]
    Schema(String),
    /// An existing output that cannot be read back (a damaged part or row file).
    #[error("{0}")]
    Unreadable(String),
    /// The destination (an object store, a broker, a database) refused or could not be reached,
    /// retries included.
    #[error("{0}")]
    Destination(String),
    /// The sink's settings cannot be used (a connection string, an environment variable).
    #[error("{0}")]
    Settings(String),
}

impl RunError {
    /// An I/O failure while `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RunError::Io {
            what: what.into(),
            source,
        }
    }
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
    /// The stages ask for what the run does not have (GPUs), or for negative resources.
    #[error("{0}")]
    Resources(String),
    /// Skip-completed asked of a sink that cannot tell which items are done.
    #[error("this sink cannot tell which items are done; run without skip_completed")]
    CannotSkip,
    /// The source could not be opened.
    #[error("cannot open the source: {0}")]
    Source(#[source] std::io::Error),
    /// A source or output location that cannot be used.
    #[error(transparent)]
    Storage(#[from] sluice_core::storage::StorageError),
    /// The pipeline is run by another command (a broker's source by `sluice worker`, any other
    /// by `sluice run`); the message names it.
    #[error("{0}")]
    WrongCommand(String),
    /// The broker could not be reached or set up.
    #[error("{0}")]
    Broker(String),
    /// A file of the run's own (failures, summary, scratch, spill) could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
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
