//! Record keys as text, and the error for a part whose records lack theirs: shared by the sinks,
//! the Parquet encoding, the sources and NATS, below all of them.

use std::path::Path;

use crate::SinkError;

/// The key of a JSON record as text: strings as they are, anything else as JSON.
pub fn key_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The error for a part whose records lack the key field, at `line` when the format has lines.
pub(crate) fn missing_key(path: &Path, line: Option<usize>, key_field: &str) -> SinkError {
    let at = match line {
        Some(n) => format!("{}:{n}", path.display()),
        None => path.display().to_string(),
    };
    SinkError::Schema(format!(
        "{at}: record has no {key_field:?} field, so a rerun cannot tell which items are done"
    ))
}
