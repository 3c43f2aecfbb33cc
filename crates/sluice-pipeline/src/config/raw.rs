//! A pipeline file read for what every kind of pipeline shares: sections with their `file:line`
//! places, `--set` overrides, `[run]` and the stage settings every kind takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use crate::section::{section, ConfigError, ConfigProblem};
use crate::{Mode, Progress, RunOptions, Shard, StageOptions, Workers};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    run: Option<Spanned<Table>>,
    source: Spanned<Table>,
    #[serde(default)]
    stage: Vec<Spanned<Table>>,
    sink: Option<Spanned<Table>>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RunSection {
    pub(super) mode: Option<Mode>,
    pub(super) cpus: Option<f64>,
    pub(super) gpus: Option<f64>,
    #[serde(default)]
    pub(super) preserve_order: bool,
    pub(super) skip_completed: Option<bool>,
    pub(super) failures: Option<PathBuf>,
    pub(super) summary: Option<PathBuf>,
    pub(super) spill_dir: Option<PathBuf>,
    pub(super) memory_budget_mb: Option<u64>,
    pub(super) balance_interval_ms: Option<u64>,
    pub(super) batch_wait_ms: Option<u64>,
}

/// Settings every stage kind accepts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: Option<String>,
    batch_size: Option<usize>,
    workers: Option<WorkersValue>,
    workers_per_node: Option<usize>,
    cpus: Option<f64>,
    gpus: Option<f64>,
    max_retries: Option<u32>,
    retry_backoff_ms: Option<u64>,
    max_restarts: Option<u32>,
}

/// The keys every `[[stage]]` takes besides its kind's own (`kind` aside).
pub fn stage_setting_keys() -> Vec<&'static str> {
    super::fields::keys_of::<Common>()
}

/// The keys `[run]` takes.
pub fn run_keys() -> Vec<&'static str> {
    super::fields::keys_of::<RunSection>()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WorkersValue {
    Count(usize),
    Word(String),
}

/// Where a byte offset of `text` is, as `file:line`.
fn at(file: &Path, text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1;
    format!("{}:{line}", file.display())
}

/// Applies `--set a.b.c=value` to the parsed document. `stage.N` (from 0) or `stage.NAME` picks a
/// stage; the value is read as TOML (`8`, `true`, `"x"`, `[1, 2]`) or else taken as a string.
fn apply_set(doc: &mut Document, assignment: &str) -> Result<(), ConfigError> {
    let set = |problem: String| ConfigError::new("--set", ConfigProblem::Override(problem));
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        set(format!(
            "{assignment:?}: expected KEY=VALUE, e.g. stage.0.batch_size=8"
        ))
    })?;
    let value: Value = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let parts: Vec<&str> = path.trim().split('.').collect();
    let bad = || {
        set(format!(
            "{path}: expected run.KEY, source.KEY, sink.KEY or stage.N.KEY / stage.NAME.KEY"
        ))
    };
    let (table, key) = match parts.as_slice() {
        ["run", key] => {
            let run = doc
                .run
                .get_or_insert_with(|| Spanned::new(0..0, Table::new()));
            (run.get_mut(), *key)
        }
        ["source", key] => (doc.source.get_mut(), *key),
        ["sink", key] => {
            let sink = doc
                .sink
                .get_or_insert_with(|| Spanned::new(0..0, Table::new()));
            (sink.get_mut(), *key)
        }
        ["stage", which, key] => {
            let index = match which.parse::<usize>() {
                Ok(i) => i,
                Err(_) => doc
                    .stage
                    .iter()
                    .position(|s| s.get_ref().get("name").and_then(|n| n.as_str()) == Some(*which))
                    .ok_or_else(|| set(format!("{path}: no stage is named {which:?}")))?,
            };
            let count = doc.stage.len();
            let stage = doc
                .stage
                .get_mut(index)
                .ok_or_else(|| set(format!("{path}: there are {count} stages, numbered from 0")))?;
            (stage.get_mut(), *key)
        }
        _ => return Err(bad()),
    };
    table.insert(key.to_string(), value);
    Ok(())
}

/// A section of a pipeline file with where it starts, for messages.
#[derive(Debug, Clone)]
pub struct RawSection {
    /// `file:line` (or `--set` for a section only overrides created).
    pub place: String,
    /// Its keys.
    pub table: Table,
}

/// A `[[stage]]` with the settings every kind shares already checked.
#[derive(Debug, Clone)]
pub struct RawStage {
    /// `file:line` of the stage.
    pub place: String,
    /// Its position among the stages, from 0.
    pub index: usize,
    /// Its `kind`.
    pub kind: String,
    /// Its `name` (default `KIND-INDEX`), unique in the file.
    pub name: String,
    /// Batch size, workers, resources, retries.
    pub options: StageOptions,
    /// The kind's own keys (the shared ones removed).
    pub table: Table,
}

impl RawStage {
    /// How messages name the stage: `[[stage]] INDEX (KIND)`.
    pub fn what(&self) -> String {
        format!("[[stage]] {} ({})", self.index, self.kind)
    }

    /// An error about this stage, starting with its place and name.
    pub fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::invalid(&self.place, self.what(), message)
    }

    /// The kind's own keys read as `T` (unknown keys refused with the stage's place).
    pub fn spec<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ConfigError> {
        section(&self.table, &self.what(), &self.place)
    }
}

/// A pipeline file read for what every kind of pipeline shares: `[run]`, the shared stage
/// settings, `--set` overrides and `file:line` places. Crates with their own stage kinds (audio)
/// build their pipelines from it, so every pipeline file reads and fails the same way.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The file, for messages.
    pub file: String,
    /// `[source]`.
    pub source: RawSection,
    /// `[[stage]]` tables in order.
    pub stages: Vec<RawStage>,
    /// `[sink]`, when present.
    pub sink: Option<RawSection>,
    pub(super) run: RunSection,
}

impl RawConfig {
    /// Reads and checks a pipeline file, applying `--set` overrides first; `${date}` is today.
    pub fn load(file: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        Self::load_with(file, sets, &super::vars::Vars::today())
    }

    /// Reads and checks a pipeline file with the run's variables, applying `--set` overrides
    /// first.
    pub fn load_with(
        file: &Path,
        sets: &[String],
        vars: &super::vars::Vars,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::new(file.display().to_string(), ConfigProblem::Read(e)))?;
        Self::parse_with(file, &text, sets, vars)
    }

    /// Checks config text; `file` is only used in messages; `${date}` is today.
    pub fn parse(file: &Path, text: &str, sets: &[String]) -> Result<Self, ConfigError> {
        Self::parse_with(file, text, sets, &super::vars::Vars::today())
    }

    /// Checks config text with the run's variables (`${name}` in any string).
    pub fn parse_with(
        file: &Path,
        text: &str,
        sets: &[String],
        vars: &super::vars::Vars,
    ) -> Result<Self, ConfigError> {
        let doc = read_document(file, text, sets, vars)?;
        let where_of = |span: std::ops::Range<usize>| {
            if span.is_empty() {
                "--set".to_string()
            } else {
                at(file, text, span.start)
            }
        };
        let run: RunSection = match &doc.run {
            Some(run) => section(run.get_ref(), "[run]", &where_of(run.span()))?,
            None => RunSection::default(),
        };
        let mut stages = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, spanned) in doc.stage.iter().enumerate() {
            let stage = raw_stage(i, spanned.get_ref(), where_of(spanned.span()))?;
            if !names.insert(stage.name.clone()) {
                return Err(stage.error(format!("another stage is already named {:?}", stage.name)));
            }
            stages.push(stage);
        }
        Ok(RawConfig {
            file: file.display().to_string(),
            source: RawSection {
                place: where_of(doc.source.span()),
                table: doc.source.get_ref().clone(),
            },
            stages,
            sink: doc.sink.map(|sink| RawSection {
                place: where_of(sink.span()),
                table: sink.get_ref().clone(),
            }),
            run,
        })
    }

    /// `[run] memory_budget_mb`, when the file sets it.
    pub fn memory_budget_mb(&self) -> Option<u64> {
        self.run.memory_budget_mb
    }

    /// The `[source]`'s kind, if it names one.
    pub fn source_kind(&self) -> Option<&str> {
        self.source.table.get("kind").and_then(|k| k.as_str())
    }

    /// The run options `[run]` sets; the failures and summary files default to `default_dir`.
    pub fn run_options(&self, default_dir: Option<&Path>) -> RunOptions {
        let run = &self.run;
        let default = |name: &str| default_dir.map(|d| d.join(name));
        RunOptions {
            mode: run.mode,
            cpus: run.cpus,
            gpus: run.gpus,
            preserve_order: run.preserve_order,
            shard: Shard::ALL,
            skip_completed: run.skip_completed.unwrap_or(true),
            failures_path: run.failures.clone().or_else(|| default("_failures.jsonl")),
            summary_path: run.summary.clone().or_else(|| default("_summary.json")),
            spill_dir: run.spill_dir.clone(),
            memory_budget: run.memory_budget_mb.map(|mb| mb << 20).unwrap_or(1 << 30),
            balance_interval: Duration::from_millis(run.balance_interval_ms.unwrap_or(2000)),
            progress: Progress::Auto,
            on_failure: None,
            batch_wait: run.batch_wait_ms.map(Duration::from_millis),
        }
    }
}

/// The file's sections, with `--set` overrides applied and `${name}` expanded in every string.
fn read_document(
    file: &Path,
    text: &str,
    sets: &[String],
    vars: &super::vars::Vars,
) -> Result<Document, ConfigError> {
    super::vars::check(file, text, vars)?;
    let mut doc: Document = toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|s| at(file, text, s.start))
            .unwrap_or_else(|| file.display().to_string());
        ConfigError::new(
            place,
            ConfigProblem::Toml(e.message().trim_end().to_owned()),
        )
    })?;
    for set in sets {
        apply_set(&mut doc, set)?;
    }
    // Every string, `--set` ones included (the file's were checked line by line above).
    let tables = doc
        .run
        .iter_mut()
        .chain(std::iter::once(&mut doc.source))
        .chain(doc.stage.iter_mut())
        .chain(doc.sink.iter_mut());
    for table in tables {
        for (_, value) in table.get_mut().iter_mut() {
            super::vars::expand_value(value, vars)
                .map_err(|e| ConfigError::new("--set", e.into()))?;
        }
    }
    Ok(doc)
}

/// The `index`th `[[stage]]` (at `place`) with the settings every kind shares read and checked;
/// the kind's own keys stay in its table.
fn raw_stage(index: usize, stage: &Table, place: String) -> Result<RawStage, ConfigError> {
    let mut table = stage.clone();
    let kind = match table.remove("kind") {
        Some(Value::String(kind)) => kind,
        _ => {
            return Err(ConfigError::new(
                place,
                ConfigProblem::MissingKind {
                    part: format!("[[stage]] {index}"),
                    expected: "e.g. kind = \"exec\"".into(),
                },
            ))
        }
    };
    let mut common_table = Table::new();
    for key in stage_setting_keys() {
        if let Some(v) = table.remove(key) {
            common_table.insert(key.into(), v);
        }
    }
    let what = format!("[[stage]] {index} ({kind})");
    let common: Common = section(&common_table, &what, &place)?;
    let options = stage_options(&common).map_err(|e| ConfigError::invalid(&place, &what, e))?;
    let name = common.name.unwrap_or_else(|| format!("{kind}-{index}"));
    Ok(RawStage {
        place,
        index,
        kind,
        name,
        options,
        table,
    })
}

fn stage_options(common: &Common) -> Result<StageOptions, String> {
    let mut options = StageOptions::default();
    if let Some(n) = common.batch_size {
        if n == 0 {
            return Err("batch_size must be at least 1".into());
        }
        options.batch_size = n;
    }
    options.workers = match (&common.workers, common.workers_per_node) {
        (Some(_), Some(_)) => return Err("set workers or workers_per_node, not both".into()),
        (None, Some(0)) | (Some(WorkersValue::Count(0)), None) => {
            return Err("workers must be at least 1".into())
        }
        (None, Some(n)) => Workers::PerNode(n),
        (Some(WorkersValue::Count(n)), None) => Workers::Fixed(*n),
        (Some(WorkersValue::Word(w)), None) if w == "auto" => Workers::Auto,
        (Some(WorkersValue::Word(w)), None) => {
            return Err(format!("workers = {w:?}: expected a number or \"auto\""))
        }
        (None, None) => Workers::Auto,
    };
    if let Some(c) = common.cpus {
        options.cpus = c;
    }
    if let Some(g) = common.gpus {
        options.gpus = g;
    }
    if options.cpus < 0.0 || options.gpus < 0.0 {
        return Err("cpus and gpus cannot be negative".into());
    }
    if let Some(r) = common.max_retries {
        options.max_retries = r;
    }
    if let Some(ms) = common.retry_backoff_ms {
        options.retry_backoff = Duration::from_millis(ms);
    }
    if let Some(r) = common.max_restarts {
        options.max_restarts = r;
    }
    Ok(options)
}
