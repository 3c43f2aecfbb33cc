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
//! Every source, stage and sink kind is built by the builder a [`Registry`] holds for it.

mod raw;
mod registry;
mod vars;

pub use raw::{RawConfig, RawSection, RawStage};
pub use registry::{
    Parts, RecordStage, RecordStageFactory, Registry, SinkBuilder, SinkPlan, SourceBuilder,
    SourcePlan, StageBuilder,
};
pub use vars::Vars;

use std::path::Path;

use crate::stages::{read_source, Record};
use crate::{map, ItemError, PartSink, Pipeline, RunError, RunOptions, RunSummary, StageOptions};

pub use crate::section::{section, ConfigError};

/// A validated config, ready to run.
pub struct PipelineConfig {
    source: SourcePlan,
    stages: Vec<RecordStageFactory>,
    sink: SinkPlan,
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
            return Err(ConfigError(format!(
                "{}: needs a [sink] (kind = one of {}, path = ...)",
                raw.file,
                registry.sink_names().join(", ")
            )));
        };
        let sink = registry.build_sink(&sink_section)?;
        let key_field = sink
            .key_field()
            .or(source.key())
            .unwrap_or("key")
            .to_string();
        let options = match &sink {
            SinkPlan::Parts(parts) => raw.run_options(Some(&parts.dir)),
            #[cfg(feature = "nats")]
            SinkPlan::Nats(_) => {
                if raw.run.skip_completed == Some(true) {
                    return Err(ConfigError(format!(
                        "{}: [sink] (nats): a stream cannot tell which items are done, so \
                         skip_completed cannot apply; JetStream drops a key published again \
                         within the stream's duplicate window instead",
                        sink_section.place
                    )));
                }
                let mut options = raw.run_options(None);
                options.skip_completed = false;
                options
            }
            // The table says what is done; failures and the summary go where [run] says.
            #[cfg(feature = "postgres")]
            SinkPlan::Postgres(_) => raw.run_options(None),
        };
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

    /// Runs the config as a `sluice worker`: pulls from its NATS source until stopped (or
    /// drained), acking each item once its output is durable. Returns the run summary and what
    /// happened to the messages.
    #[cfg(feature = "nats")]
    pub fn run_worker(
        self,
        worker: crate::nats::WorkerOptions,
    ) -> Result<(RunSummary, crate::nats::WorkerCounts), RunError> {
        use crate::nats::{WorkerPlan, WorkerSink};
        let SourcePlan::Nats(source) = &self.source else {
            return Err(RunError::Invalid(
                "sluice worker reads a [source] of kind = \"nats\"; run other pipelines with \
                 sluice run"
                    .into(),
            ));
        };
        let source = source.clone();
        let mut done_check: Option<crate::nats::DoneCheck> = None;
        let sink = match &self.sink {
            SinkPlan::Parts(parts) => {
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
            SinkPlan::Nats(spec) => WorkerSink::Nats(spec.clone(), self.key_field.clone()),
            #[cfg(feature = "postgres")]
            SinkPlan::Postgres(spec) => {
                let sink = crate::PostgresSink::new(spec)?;
                // A connection of its own, kept between checks (the writing one is the sink's).
                let checker = std::sync::Mutex::new(crate::PostgresSink::new(spec)?);
                done_check = Some(Box::new(move || {
                    let mut checker = checker.lock().unwrap_or_else(|e| e.into_inner());
                    crate::Sink::<Record>::completed(&mut *checker)
                }));
                WorkerSink::Parts(Box::new(sink), spec.batch_rows)
            }
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
            SourcePlan::Items(spec) => spec,
            #[cfg(feature = "nats")]
            SourcePlan::Nats(_) => {
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
            SinkPlan::Parts(parts) => {
                Box::new(parts.open(&self.key_field, &self.options.shard.part_tag())?)
            }
            #[cfg(feature = "nats")]
            SinkPlan::Nats(spec) => {
                Box::new(crate::nats::NatsSink::connect(spec, &self.key_field)?)
            }
            #[cfg(feature = "postgres")]
            SinkPlan::Postgres(spec) => Box::new(crate::PostgresSink::new(spec)?),
        };
        let options = self.options.clone();
        Self::pipeline(self.stages, keyed).run(&options, sink.as_mut())
    }
}

const READ_ERROR: &str = "sluice_read_error";
