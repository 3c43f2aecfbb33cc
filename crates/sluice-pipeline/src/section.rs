//! Reading one TOML table of a pipeline file into its typed section, and the error every config
//! reader returns. Kept apart from [`crate::config`] so the readers of other sections (NATS
//! sources and sinks) do not depend on the whole config module, nor it on them both ways.

use serde::Deserialize;
use toml::{Table, Value};

/// A pipeline file (or a setting given for it) that cannot be used: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct ConfigError {
    /// `file:line`, the file, or the flag (`--set ...`, `--output`) the problem is in.
    pub place: String,
    /// What is wrong, with the fix where there is one.
    pub problem: ConfigProblem,
}

/// What is wrong with a pipeline file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// The file cannot be read.
    #[error("cannot read the pipeline file: {0}")]
    Read(#[source] std::io::Error),
    /// The text is not TOML a pipeline file can be (the parser's message).
    #[error("{0}")]
    Toml(String),
    /// A section without a kind.
    #[error("{part}: needs a kind: {expected}")]
    MissingKind {
        /// `[source]`, `[[stage]] 2`, `[sink]`.
        part: String,
        /// The kinds there are.
        expected: String,
    },
    /// A kind nothing is registered for.
    #[error("{part}: unknown kind {kind:?}: {expected}")]
    UnknownKind {
        /// `[source]`, `[[stage]] 2`, `[sink] (jsonl)`.
        part: String,
        /// The kind named.
        kind: String,
        /// The kinds there are.
        expected: String,
    },
    /// A setting of a section that cannot be used.
    #[error("{part}: {message}")]
    Invalid {
        /// The section: `[sink] (postgres)`, `[[stage]] 0 (exec)`.
        part: String,
        /// What is wrong with it.
        message: String,
    },
    /// A section the file must have.
    #[error("{0}")]
    Missing(String),
    /// A `--set` that cannot be applied.
    #[error("{0}")]
    Override(String),
    /// An output URL that cannot name a sink (`postgres://...` without a table, say).
    #[error("{0}")]
    Url(String),
    /// A `${variable}` that cannot be expanded.
    #[error(transparent)]
    Variable(#[from] VarError),
}

impl ConfigError {
    /// `problem` at `place`.
    pub fn new(place: impl Into<String>, problem: ConfigProblem) -> Self {
        Self {
            place: place.into(),
            problem,
        }
    }

    /// A setting of section `part` at `place` that cannot be used, and why.
    pub fn invalid(
        place: impl Into<String>,
        part: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        Self::new(
            place,
            ConfigProblem::Invalid {
                part: part.into(),
                message: message.to_string(),
            },
        )
    }
}

/// Reads a section's `table` as `T`; errors name `where_` (`file:line`) and `what`.
pub fn section<T: for<'de> Deserialize<'de>>(
    table: &Table,
    what: &str,
    where_: &str,
) -> Result<T, ConfigError> {
    T::deserialize(Value::Table(table.clone()))
        .map_err(|e| ConfigError::invalid(where_, what, e.message()))
}

/// A run variable that cannot be set or expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    /// A `--var` without `=`.
    #[error("--var {0:?}: expected NAME=VALUE")]
    NotAssignment(String),
    /// A `--var` name that is not letters, digits and `_`.
    #[error("--var {0:?}: a name is letters, digits and '_'")]
    BadName(String),
    /// A `--var` setting a built-in name.
    #[error("--var {pair:?}: {name} is built in; set the run's date with --date")]
    BuiltIn {
        /// The argument.
        pair: String,
        /// The built-in name.
        name: String,
    },
    /// A `--date` that is not a date.
    #[error("--date {given:?}: expected YYYY-MM-DD, today or yesterday ({reason})")]
    BadDate {
        /// What was given.
        given: String,
        /// Why it is not a date.
        reason: String,
    },
    /// `${` without its `}`.
    #[error("\"${{{0}\" is not closed with '}}'")]
    Unclosed(String),
    /// A name no variable has.
    #[error("${{{name}}} is not defined: give --var {name}=VALUE (defined: {defined})")]
    Undefined {
        /// The name.
        name: String,
        /// The names that are defined.
        defined: String,
    },
    /// `${name:FORMAT}` of a value that is not a date.
    #[error("${{{spec}}}: {name} = {value:?} is not a date to format")]
    NotADate {
        /// What was written inside `${}`.
        spec: String,
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
    /// A format strftime does not know.
    #[error("${{{spec}}}: {format:?} is not a date format")]
    BadFormat {
        /// What was written inside `${}`.
        spec: String,
        /// The format.
        format: String,
    },
}
