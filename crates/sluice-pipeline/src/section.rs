//! Reading one TOML table of a pipeline file into its typed section, and the error every config
//! reader returns. Kept apart from [`crate::config`] so the readers of other sections (NATS
//! sources and sinks) do not depend on the whole config module, nor it on them both ways.

use serde::Deserialize;
use toml::{Table, Value};

/// A config that cannot be used; the message names the file, the line and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads a section's `table` as `T`; errors start with `where_` (`file:line`) and `what`.
pub fn section<T: for<'de> Deserialize<'de>>(
    table: &Table,
    what: &str,
    where_: &str,
) -> Result<T, ConfigError> {
    T::deserialize(Value::Table(table.clone()))
        .map_err(|e| ConfigError(format!("{where_}: {what}: {}", e.message())))
}
