//! The run modes, named alike in pipeline files (`[run] mode`), on the command line and in
//! summaries: one type with one spelling, so the three never drift apart.

/// How stages are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// All stages at once, connected by bounded channels: bounded memory, overlapping stages.
    Streaming,
    /// One stage at a time over every item, spilling to disk past a memory budget: each stage
    /// gets the whole machine (one GPU switches between models once, not per batch).
    Batch,
    /// Plain loops on the calling thread, one worker per stage, so breakpoints work.
    Debug,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Streaming => "streaming",
            Mode::Batch => "batch",
            Mode::Debug => "debug",
        })
    }
}

/// A mode that is not `streaming`, `batch` or `debug`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?}: expected streaming, batch or debug")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "streaming" => Ok(Mode::Streaming),
            "batch" => Ok(Mode::Batch),
            "debug" => Ok(Mode::Debug),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}
