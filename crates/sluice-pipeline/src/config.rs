//! `sluice run PIPELINE.toml`: a pipeline of built-in stages described in TOML, checked before
//! anything runs, with errors that name the file and line.
//!
//! ```toml
//! [run]
//! mode = "streaming"        # streaming | batch | debug (default: streaming; batch with one GPU)
//!
//! [source]
//! kind = "jsonl"            # lines | jsonl | files
//! path = "input.jsonl"
//! key = "id"
//!
//! [[stage]]
//! kind = "exec"             # exec, or a kind another crate adds (sluice-stages: translate, model)
//! name = "clean"
//! command = ["python3", "clean.py"]
//! batch_size = 32
//! workers = "auto"          # or a number
//!
//! [sink]
//! kind = "jsonl"            # jsonl | parquet: part files, each renamed into place when full
//! path = "out"
//! explode = "windows"       # optional: one row per element of this array field
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Table, Value};

use crate::stages::{read_source, ExecStage, Record, SourceSpec};
use crate::{
    map, ItemError, Mode, PartFormat, PartSink, Pipeline, Progress, RunError, RunOptions,
    RunSummary, Shard, Stage, StageOptions, Workers,
};

pub use crate::section::{section, ConfigError};

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
struct RunSection {
    mode: Option<Mode>,
    cpus: Option<f64>,
    gpus: Option<f64>,
    #[serde(default)]
    preserve_order: bool,
    skip_completed: Option<bool>,
    failures: Option<PathBuf>,
    summary: Option<PathBuf>,
    spill_dir: Option<PathBuf>,
    memory_budget_mb: Option<u64>,
    balance_interval_ms: Option<u64>,
    batch_wait_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSection {
    kind: String,
    path: PathBuf,
    key: Option<String>,
    #[serde(default)]
    extensions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSection {
    kind: String,
    path: PathBuf,
    key_field: Option<String>,
    part_items: Option<usize>,
    explode: Option<String>,
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

const COMMON_KEYS: [&str; 9] = [
    "name",
    "batch_size",
    "workers",
    "workers_per_node",
    "cpus",
    "gpus",
    "max_retries",
    "retry_backoff_ms",
    "max_restarts",
];

#[derive(Deserialize)]
#[serde(untagged)]
enum WorkersValue {
    Count(usize),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecSection {
    command: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

/// A built stage of a config pipeline.
enum BuiltStage {
    Exec(Box<ExecStage>),
    Other(RecordStageFactory),
}

/// A record stage defined outside this crate: a fresh instance per worker.
pub type RecordStage = Box<dyn Stage<In = Record, Out = Record>>;

/// Makes one [`RecordStage`] per worker.
pub type RecordStageFactory = Arc<dyn Fn() -> RecordStage + Send + Sync>;

/// Builds a stage of one kind from its `[[stage]]` table.
pub type StageBuilder = fn(&RawStage) -> Result<RecordStageFactory, ConfigError>;

/// Stage kinds that crates above this one add to config pipelines (`sluice-stages`' `translate`
/// and `model`): the engine depends on no model crate.
#[derive(Default, Clone)]
pub struct StageKinds {
    kinds: Vec<(&'static str, StageBuilder)>,
}

impl StageKinds {
    /// Adds a kind.
    pub fn with(mut self, kind: &'static str, build: StageBuilder) -> Self {
        self.kinds.push((kind, build));
        self
    }

    fn get(&self, kind: &str) -> Option<StageBuilder> {
        self.kinds.iter().find(|(k, _)| *k == kind).map(|(_, b)| *b)
    }

    fn names(&self) -> String {
        let mut all = vec!["exec"];
        all.extend(self.kinds.iter().map(|(k, _)| *k));
        all.join(", ")
    }
}

impl Stage for RecordStage {
    type In = Record;
    type Out = Record;

    fn name(&self) -> String {
        (**self).name()
    }

    fn options(&self) -> StageOptions {
        (**self).options()
    }

    fn setup(&mut self, worker: &crate::WorkerContext) -> Result<(), crate::StageError> {
        (**self).setup(worker)
    }

    fn process(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<Result<Record, ItemError>>, crate::StageError> {
        (**self).process(batch)
    }
}

/// Where a config pipeline reads.
enum ConfigSource {
    Items(SourceSpec),
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsSource),
}

/// Part files: `[sink] kind = "jsonl" | "parquet"`.
#[derive(Clone)]
struct Parts {
    dir: PathBuf,
    format: PartFormat,
    part_items: usize,
    explode: Option<String>,
}

impl Parts {
    /// A writer of parts whose names carry `tag`.
    fn open(&self, key_field: &str, tag: &str) -> Result<PartSink, crate::SinkError> {
        let sink = PartSink::new(self.format, &self.dir, key_field, self.part_items, tag)?;
        Ok(match &self.explode {
            Some(field) => sink.explode(field),
            None => sink,
        })
    }
}

/// Where a config pipeline writes.
enum ConfigSink {
    Parts(Parts),
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsSinkSpec),
}

/// A validated config, ready to run.
pub struct PipelineConfig {
    source: ConfigSource,
    stages: Vec<BuiltStage>,
    sink: ConfigSink,
    key_field: String,
    /// The run options the config sets (command-line flags may change them before running).
    pub options: RunOptions,
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
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        ConfigError(format!(
            "--set {assignment:?}: expected KEY=VALUE, e.g. stage.0.batch_size=8"
        ))
    })?;
    let value: Value = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let parts: Vec<&str> = path.trim().split('.').collect();
    let bad = || {
        ConfigError(format!(
            "--set {path}: expected run.KEY, source.KEY, sink.KEY or stage.N.KEY / stage.NAME.KEY"
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
                    .ok_or_else(|| {
                        ConfigError(format!("--set {path}: no stage is named {which:?}"))
                    })?,
            };
            let count = doc.stage.len();
            let stage = doc.stage.get_mut(index).ok_or_else(|| {
                ConfigError(format!(
                    "--set {path}: there are {count} stages, numbered from 0"
                ))
            })?;
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
        ConfigError(format!("{}: {}: {message}", self.place, self.what()))
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
    run: RunSection,
}

impl RawConfig {
    /// Reads and checks a pipeline file, applying `--set` overrides first.
    pub fn load(file: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError(format!("cannot read pipeline {}: {e}", file.display())))?;
        Self::parse(file, &text, sets)
    }

    /// Checks config text; `file` is only used in messages.
    pub fn parse(file: &Path, text: &str, sets: &[String]) -> Result<Self, ConfigError> {
        let mut doc: Document = toml::from_str(text).map_err(|e| {
            let place = e
                .span()
                .map(|s| at(file, text, s.start))
                .unwrap_or_else(|| file.display().to_string());
            ConfigError(format!("{place}: {}", e.message().trim_end()))
        })?;
        for set in sets {
            apply_set(&mut doc, set)?;
        }
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
            let place = where_of(spanned.span());
            let mut table = spanned.get_ref().clone();
            let kind = match table.remove("kind") {
                Some(Value::String(kind)) => kind,
                _ => {
                    return Err(ConfigError(format!(
                        "{place}: [[stage]] {i}: needs a kind, e.g. kind = \"exec\""
                    )))
                }
            };
            let mut common_table = Table::new();
            for key in COMMON_KEYS {
                if let Some(v) = table.remove(key) {
                    common_table.insert(key.into(), v);
                }
            }
            let what = format!("[[stage]] {i} ({kind})");
            let common: Common = section(&common_table, &what, &place)?;
            let options =
                stage_options(&common).map_err(|e| ConfigError(format!("{place}: {what}: {e}")))?;
            let name = common.name.unwrap_or_else(|| format!("{kind}-{i}"));
            if !names.insert(name.clone()) {
                return Err(ConfigError(format!(
                    "{place}: {what}: another stage is already named {name:?}"
                )));
            }
            stages.push(RawStage {
                place,
                index: i,
                kind,
                name,
                options,
                table,
            });
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

impl PipelineConfig {
    /// Reads and checks a config file, applying `--set` overrides first.
    pub fn load(file: &Path, sets: &[String]) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::load(file, sets)?)
    }

    /// Checks config text; `file` is only used in messages.
    pub fn parse(file: &Path, text: &str, sets: &[String]) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::parse(file, text, sets)?)
    }

    /// Builds the JSON-records pipeline from a file read by [`RawConfig::parse`].
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        Self::from_raw_with(raw, &StageKinds::default())
    }

    /// As [`PipelineConfig::from_raw`], with stage kinds defined by other crates.
    pub fn from_raw_with(raw: RawConfig, kinds: &StageKinds) -> Result<Self, ConfigError> {
        let src_at = raw.source.place.clone();
        #[cfg(feature = "nats")]
        if raw.source_kind() == Some("nats") {
            let mut table = raw.source.table.clone();
            table.remove("kind");
            let source = crate::nats::NatsSource::parse(&table, &src_at)?;
            let key = source.key.clone();
            return Self::finish_with(raw, kinds, ConfigSource::Nats(source), key);
        }
        let src: SourceSection = section(&raw.source.table, "[source]", &src_at)?;
        let source = match src.kind.as_str() {
            "lines" => SourceSpec::Lines { path: src.path },
            "jsonl" => SourceSpec::Jsonl {
                path: src.path,
                key: src.key,
            },
            "files" => SourceSpec::Files {
                path: src.path,
                extensions: src.extensions,
            },
            other => {
                return Err(ConfigError(format!(
                    "{src_at}: [source]: unknown kind {other:?}: expected lines, jsonl, files, \
                     nats or match_files (audio)"
                )))
            }
        };
        if !matches!(source, SourceSpec::Jsonl { .. }) && raw.source.table.contains_key("key") {
            return Err(ConfigError(format!(
                "{src_at}: [source]: key only applies to kind = \"jsonl\" or \"nats\""
            )));
        }
        let key = match &source {
            SourceSpec::Jsonl { key, .. } => key.clone(),
            _ => None,
        };
        Self::finish_with(raw, kinds, ConfigSource::Items(source), key)
    }

    /// Builds the stages and the sink of a config whose source is read.
    fn finish_with(
        mut raw: RawConfig,
        kinds: &StageKinds,
        source: ConfigSource,
        source_key: Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut stages = Vec::new();
        for stage in std::mem::take(&mut raw.stages) {
            let (name, options) = (stage.name.clone(), stage.options.clone());
            stages.push(match stage.kind.as_str() {
                "exec" => {
                    let spec: ExecSection = stage.spec()?;
                    if spec.command.is_empty() {
                        return Err(stage.error("command is empty"));
                    }
                    let mut exec = ExecStage::new(&name, spec.command, options);
                    exec.env = spec.env.into_iter().collect();
                    BuiltStage::Exec(Box::new(exec))
                }
                other => match kinds.get(other) {
                    Some(build) => BuiltStage::Other(build(&stage)?),
                    None => {
                        return Err(ConfigError(format!(
                            "{}: [[stage]] {}: unknown kind {other:?}: expected one of {}",
                            stage.place,
                            stage.index,
                            kinds.names()
                        )))
                    }
                },
            });
        }

        let Some(sink_section) = raw.sink.take() else {
            return Err(ConfigError(format!(
                "{}: needs a [sink] (kind = \"jsonl\" or \"parquet\", path = ...)",
                raw.file
            )));
        };
        let sink_at = sink_section.place;
        #[cfg(feature = "nats")]
        if sink_section.table.get("kind").and_then(|k| k.as_str()) == Some("nats") {
            let mut table = sink_section.table.clone();
            table.remove("kind");
            let spec = crate::nats::NatsSinkSpec::parse(&table, &sink_at)?;
            if raw.run.skip_completed == Some(true) {
                return Err(ConfigError(format!(
                    "{sink_at}: [sink] (nats): a stream cannot tell which items are done, so \
                     skip_completed cannot apply; JetStream drops a key published again within \
                     the stream's duplicate window instead"
                )));
            }
            let key_field = spec
                .key_field
                .clone()
                .or(source_key)
                .unwrap_or_else(|| "key".into());
            let mut options = raw.run_options(None);
            options.skip_completed = false;
            return Ok(PipelineConfig {
                source,
                stages,
                sink: ConfigSink::Nats(spec),
                key_field,
                options,
            });
        }
        let sink: SinkSection = section(&sink_section.table, "[sink]", &sink_at)?;
        let sink_format = match sink.kind.as_str() {
            "jsonl" => PartFormat::Jsonl,
            #[cfg(feature = "parquet")]
            "parquet" => PartFormat::Parquet,
            other => {
                return Err(ConfigError(format!(
                    "{sink_at}: [sink]: unknown kind {other:?}: expected {}",
                    SINK_KINDS.join(" or ")
                )))
            }
        };
        let key_field = sink
            .key_field
            .or(source_key)
            .unwrap_or_else(|| "key".into());
        let options = raw.run_options(Some(&sink.path));
        Ok(PipelineConfig {
            source,
            stages,
            sink: ConfigSink::Parts(Parts {
                dir: sink.path,
                format: sink_format,
                part_items: sink.part_items.unwrap_or(10_000),
                explode: sink.explode,
            }),
            key_field,
            options,
        })
    }

    /// The source's items behind a first `read` stage, then the config's stages.
    fn pipeline(
        stages: Vec<BuiltStage>,
        keyed: impl Iterator<Item = (String, Record)> + Send + 'static,
    ) -> Pipeline<Record> {
        let read = map(
            "read",
            StageOptions::default().batch_size(256),
            |record: &Record| match record.get(READ_ERROR).and_then(|m| m.as_str()) {
                Some(message) => Err(ItemError::permanent(message)),
                None => Ok(record.clone()),
            },
        );
        let mut pipeline = Pipeline::from_keyed(keyed).stage(read);
        for stage in stages {
            pipeline = match stage {
                BuiltStage::Exec(s) => pipeline.stage(*s),
                BuiltStage::Other(make) => pipeline.stage_with(move || make()),
            };
        }
        pipeline
    }

    /// Runs the config as a `sluice worker`: pulls from its NATS source until stopped (or
    /// drained), acking each item once its output is durable. Returns the run summary and what
    /// happened to the messages.
    #[cfg(feature = "nats")]
    pub fn run_worker(
        self,
        worker: crate::nats::WorkerOptions,
    ) -> Result<(RunSummary, crate::nats::WorkerCounts), RunError> {
        use crate::nats::{WorkerPlan, WorkerSink};
        let ConfigSource::Nats(source) = &self.source else {
            return Err(RunError::Invalid(
                "sluice worker reads a [source] of kind = \"nats\"; run other pipelines with \
                 sluice run"
                    .into(),
            ));
        };
        let source = source.clone();
        let mut done_check: Option<crate::nats::DoneCheck> = None;
        let sink = match &self.sink {
            ConfigSink::Parts(parts) => {
                // Workers share output directories, across machines too: names must not meet.
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
                let tag: String = format!("{host}-{}-", std::process::id())
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let sink = parts.open(&self.key_field, &tag)?;
                let (parts, key_field) = (parts.clone(), self.key_field.clone());
                done_check = Some(Box::new(move || {
                    PartSink::keys_in(&parts.dir, parts.format, &key_field).map(Some)
                }));
                WorkerSink::Parts(Box::new(sink), parts.part_items)
            }
            ConfigSink::Nats(spec) => WorkerSink::Nats(spec.clone(), self.key_field.clone()),
        };
        let stages = self.stages;
        let plan = WorkerPlan {
            source,
            sink,
            done_check,
            build: Box::new(move |pull| Self::pipeline(stages, pull)),
        };
        let mut options = self.options;
        options.failures_path = None;
        crate::nats::run_worker(plan, options, worker)
    }

    /// Builds the pipeline and runs it to the end.
    pub fn run(self) -> Result<RunSummary, RunError> {
        let spec = match &self.source {
            ConfigSource::Items(spec) => spec,
            #[cfg(feature = "nats")]
            ConfigSource::Nats(_) => {
                return Err(RunError::Invalid(
                    "a [source] of kind = \"nats\" is read by workers that run until stopped: \
                     use `sluice worker FILE` (with --exit-when-drained to stop once the stream \
                     is empty)"
                        .into(),
                ))
            }
        };
        let items = read_source(spec)
            .map_err(|e| RunError::Invalid(format!("cannot open the source: {e}")))?;
        // Unreadable input records travel as markers and fail in a first "read" stage, so that
        // they are reported like any other failed item instead of stopping the run.
        let keyed = items.enumerate().map(|(i, item)| match item {
            Ok(pair) => pair,
            Err(message) => (
                format!("unreadable-{}", i + 1),
                serde_json::json!({ READ_ERROR: message }),
            ),
        });
        let mut sink: Box<dyn crate::Sink<Record>> = match &self.sink {
            ConfigSink::Parts(parts) => {
                Box::new(parts.open(&self.key_field, &self.options.shard.part_tag())?)
            }
            #[cfg(feature = "nats")]
            ConfigSink::Nats(spec) => {
                Box::new(crate::nats::NatsSink::connect(spec, &self.key_field)?)
            }
        };
        let options = self.options.clone();
        Self::pipeline(self.stages, keyed).run(&options, sink.as_mut())
    }
}

/// The sink kinds this build offers.
const SINK_KINDS: &[&str] = &[
    "jsonl",
    #[cfg(feature = "parquet")]
    "parquet",
];

const READ_ERROR: &str = "sluice_read_error";

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
