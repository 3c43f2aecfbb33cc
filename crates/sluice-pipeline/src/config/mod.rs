//! `sluice run PIPELINE.toml`: a pipeline of built-in stages described in TOML, checked before
//! anything runs, with errors that name the file and line.
//!
//! ```toml
//! [run]
//! mode = "streaming"        # streaming | batch | debug (default: streaming; batch with one GPU)
//!
//! [source]
//! kind = "jsonl"            # lines | jsonl | files | nats
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
//!
//! Every source, stage and sink kind is built by the builder a [`Registry`] holds for it, into
//! a config the engine asks for its capabilities ([`crate::connector`]).

pub(crate) mod doc;
mod fields;
mod kinds;
pub(crate) mod raw;
mod registry;
mod vars;

pub use doc::{keys_of, Kind, KindDoc, SinkBuilder, SourceBuilder};
pub use kinds::Parts;
pub use raw::{run_keys, stage_setting_keys, RawConfig, RawSection, RawStage};
pub use registry::{
    Kinds, RecordStage, RecordStageFactory, Registry, StageBuilder, UrlSinkBuilder,
};
pub use vars::Vars;

use std::path::Path;
use std::sync::Arc;

use crate::connector::{SinkConfig, SourceConfig, WorkerCounts, WorkerJob, WorkerOptions};
use crate::stages::Record;
use crate::{map, ItemError, Pipeline, RunError, RunOptions, RunSummary, StageOptions};

pub use crate::section::{section, ConfigError, ConfigProblem, VarError};

/// A validated config, ready to run.
pub struct PipelineConfig {
    source: Arc<dyn SourceConfig>,
    stages: Vec<RecordStageFactory>,
    sink: Arc<dyn SinkConfig>,
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

    /// Builds the JSON-records pipeline from a file read by [`RawConfig::parse`], with the
    /// engine's own kinds.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        Self::from_raw_with(raw, &Registry::default())
    }

    /// As [`PipelineConfig::from_raw`], with the kinds `registry` holds (crates above the engine
    /// add theirs to it).
    pub fn from_raw_with(mut raw: RawConfig, registry: &Registry) -> Result<Self, ConfigError> {
        let source = registry.build_source(&raw.source)?;
        let stages = std::mem::take(&mut raw.stages)
            .iter()
            .map(|stage| registry.build_stage(stage))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(sink_section) = raw.sink.take() else {
            return Err(ConfigError::new(
                &raw.file,
                ConfigProblem::Missing(format!(
                    "needs a [sink] (kind = one of {}, path = ...)",
                    registry.sink_names().join(", ")
                )),
            ));
        };
        let (kind, sink) = registry.build_sink(&sink_section)?;
        let key_field = sink
            .key_field()
            .or(source.key_field())
            .unwrap_or("key")
            .to_string();
        let mut options = raw.run_options(sink.local_dir());
        if let Some(why) = sink.cannot_skip() {
            if raw.run.skip_completed == Some(true) {
                return Err(ConfigError::invalid(
                    &sink_section.place,
                    format!("[sink] ({kind})"),
                    why,
                ));
            }
            options.skip_completed = false;
        }
        Ok(PipelineConfig {
            source,
            stages,
            sink,
            key_field,
            options,
        })
    }

    /// The source's items behind a first `read` stage, then the config's stages.
    fn pipeline(
        stages: Vec<RecordStageFactory>,
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
        for make in stages {
            pipeline = pipeline.stage_with(move || make());
        }
        pipeline
    }

    /// Runs the config as a `sluice worker`: pulls from its broker's source until stopped (or
    /// drained), acknowledging each item once its output is durable. Returns the run summary
    /// and what happened to the messages.
    pub fn run_worker(self, worker: WorkerOptions) -> Result<(RunSummary, WorkerCounts), RunError> {
        let Some(broker) = self.source.broker() else {
            return Err(RunError::WrongCommand(
                "sluice worker reads a broker's [source] (kind = \"nats\"); run other \
                 pipelines with sluice run"
                    .into(),
            ));
        };
        let stages = self.stages;
        let mut options = self.options;
        options.failures_path = None;
        broker.run_worker(WorkerJob {
            sink: self.sink.clone(),
            key_field: self.key_field,
            build: Box::new(move |pull| Self::pipeline(stages, pull)),
            options,
            worker,
        })
    }

    /// Builds the pipeline and runs it to the end.
    pub fn run(self) -> Result<RunSummary, RunError> {
        let items = self.source.open()?;
        // Unreadable input records travel as markers and fail in a first "read" stage, so that
        // they are reported like any other failed item instead of stopping the run.
        let keyed = items.enumerate().map(|(i, item)| match item {
            Ok(pair) => pair,
            Err(unreadable) => (
                format!("unreadable-{}", i + 1),
                serde_json::json!({ READ_ERROR: unreadable.0 }),
            ),
        });
        let mut sink = self
            .sink
            .open(&self.key_field, &self.options.shard.part_tag())?;
        let options = self.options.clone();
        Self::pipeline(self.stages, keyed).run(&options, sink.as_mut())
    }
}

const READ_ERROR: &str = "sluice_read_error";
