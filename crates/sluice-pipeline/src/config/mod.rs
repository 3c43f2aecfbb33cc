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

mod kinds;
mod raw;

pub use kinds::{RecordStage, RecordStageFactory, StageBuilder, StageKinds};
use raw::*;
pub use raw::{RawConfig, RawSection, RawStage};

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::stages::{read_source, ExecStage, Record, SourceSpec};
use crate::{
    map, ItemError, PartFormat, PartSink, Pipeline, RunError, RunOptions, RunSummary, StageOptions,
};

pub use crate::section::{section, ConfigError};

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
