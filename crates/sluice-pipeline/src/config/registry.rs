//! The one place every source, stage and sink kind of a record pipeline is built from its section
//! (as Vector's `*Config::build`): the engine's own kinds are registered in
//! [`Registry::default`] exactly as crates above it add theirs, so a new kind is one builder
//! function and one line here or in that crate.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{ConfigError, RawSection, RawStage};
use crate::stages::{ExecStage, Record, SourceSpec};
use crate::{ItemError, PartFormat, PartSink, Stage, StageOptions};

/// A record stage defined outside this crate: a fresh instance per worker.
pub type RecordStage = Box<dyn Stage<In = Record, Out = Record>>;

/// Makes one [`RecordStage`] per worker.
pub type RecordStageFactory = Arc<dyn Fn() -> RecordStage + Send + Sync>;

/// Builds a `[source]` of one kind from its table (without `kind`).
pub type SourceBuilder = fn(&RawSection) -> Result<SourcePlan, ConfigError>;

/// Builds a stage of one kind from its `[[stage]]` table.
pub type StageBuilder = fn(&RawStage) -> Result<RecordStageFactory, ConfigError>;

/// Builds a `[sink]` of one kind from its table (without `kind`).
pub type SinkBuilder = fn(&RawSection) -> Result<SinkPlan, ConfigError>;

/// Where a record pipeline reads, as its builder made it.
#[derive(Clone)]
pub enum SourcePlan {
    /// A file or directory read once (`lines`, `jsonl`, `files`).
    Items(SourceSpec),
    /// A JetStream consumer that workers pull from until stopped.
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsSource),
}

impl SourcePlan {
    /// The record field that keys each item, when the source names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            SourcePlan::Items(SourceSpec::Jsonl { key, .. }) => key.as_deref(),
            SourcePlan::Items(_) => None,
            #[cfg(feature = "nats")]
            SourcePlan::Nats(source) => source.key.as_deref(),
        }
    }
}

/// Part files: `[sink] kind = "jsonl" | "parquet"`.
#[derive(Clone)]
pub struct Parts {
    pub(super) dir: PathBuf,
    pub(super) format: PartFormat,
    pub(super) part_items: usize,
    pub(super) explode: Option<String>,
    pub(super) key_field: Option<String>,
}

impl Parts {
    /// A writer of parts whose names carry `tag`.
    pub(super) fn open(&self, key_field: &str, tag: &str) -> Result<PartSink, crate::SinkError> {
        let sink = PartSink::new(self.format, &self.dir, key_field, self.part_items, tag)?;
        Ok(match &self.explode {
            Some(field) => sink.explode(field),
            None => sink,
        })
    }
}

/// Where a record pipeline writes, as its builder made it.
#[derive(Clone)]
pub enum SinkPlan {
    /// Part files renamed into place when full; finished keys are read back for skip-completed.
    Parts(Parts),
    /// Records published to a subject, deduplicated by key.
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsSinkSpec),
    /// Rows upserted into a PostgreSQL table by key, a transaction per part.
    #[cfg(feature = "postgres")]
    Postgres(crate::PostgresSpec),
}

impl SinkPlan {
    /// The record field that keys each output, when the sink names one.
    pub fn key_field(&self) -> Option<&str> {
        match self {
            SinkPlan::Parts(parts) => parts.key_field.as_deref(),
            #[cfg(feature = "nats")]
            SinkPlan::Nats(spec) => spec.key_field.as_deref(),
            #[cfg(feature = "postgres")]
            SinkPlan::Postgres(spec) => Some(&spec.key),
        }
    }
}

/// The kinds a record pipeline file may name, each with its builder.
#[derive(Clone)]
pub struct Registry {
    sources: Vec<(&'static str, SourceBuilder)>,
    stages: Vec<(&'static str, StageBuilder)>,
    sinks: Vec<(&'static str, SinkBuilder)>,
    /// Source kinds that make another family of pipeline (audio), named in messages only.
    elsewhere: Vec<&'static str>,
}

impl Default for Registry {
    /// The engine's own kinds: `lines`, `jsonl`, `files`, `parquet` and `nats` sources, `exec` stages,
    /// `jsonl`, `parquet` and `nats` sinks (as this build's features allow).
    fn default() -> Self {
        let registry = Registry {
            sources: Vec::new(),
            stages: Vec::new(),
            sinks: Vec::new(),
            elsewhere: Vec::new(),
        }
        .source("lines", lines_source)
        .source("jsonl", jsonl_source)
        .source("files", files_source)
        .stage("exec", exec_stage)
        .sink("jsonl", |s| parts_sink(s, PartFormat::Jsonl));
        #[cfg(feature = "parquet")]
        let registry = registry
            .source("parquet", parquet_source)
            .sink("parquet", |s| parts_sink(s, PartFormat::Parquet));
        #[cfg(feature = "nats")]
        let registry = registry
            .source("nats", |s| {
                crate::nats::NatsSource::parse(&s.table, &s.place).map(SourcePlan::Nats)
            })
            .sink("nats", |s| {
                crate::nats::NatsSinkSpec::parse(&s.table, &s.place).map(SinkPlan::Nats)
            });
        #[cfg(feature = "postgres")]
        let registry = registry.sink("postgres", |s| {
            crate::PostgresSpec::parse(&s.table, &s.place).map(SinkPlan::Postgres)
        });
        registry
    }
}

impl Registry {
    /// Adds (or replaces) a source kind.
    pub fn source(mut self, kind: &'static str, build: SourceBuilder) -> Self {
        self.sources.retain(|(k, _)| *k != kind);
        self.sources.push((kind, build));
        self
    }

    /// Adds (or replaces) a stage kind.
    pub fn stage(mut self, kind: &'static str, build: StageBuilder) -> Self {
        self.stages.retain(|(k, _)| *k != kind);
        self.stages.push((kind, build));
        self
    }

    /// Adds (or replaces) a sink kind.
    pub fn sink(mut self, kind: &'static str, build: SinkBuilder) -> Self {
        self.sinks.retain(|(k, _)| *k != kind);
        self.sinks.push((kind, build));
        self
    }

    /// Names a source kind that another family of pipeline reads (so messages list it).
    pub fn elsewhere(mut self, kind: &'static str) -> Self {
        self.elsewhere.push(kind);
        self
    }

    /// Builds `[source]` with the builder its `kind` names.
    pub fn build_source(&self, section: &RawSection) -> Result<SourcePlan, ConfigError> {
        let kind = section.table.get("kind").and_then(|k| k.as_str());
        if let Some(other) = kind.filter(|k| self.elsewhere.contains(k)) {
            return Err(ConfigError(format!(
                "{}: [source]: kind {other:?} makes another kind of pipeline than this command \
                 runs (run it with `sluice run`)",
                section.place
            )));
        }
        let mut names: Vec<&str> = self.sources.iter().map(|(k, _)| *k).collect();
        names.extend(&self.elsewhere);
        let (build, section) = pick(&self.sources, section, "[source]", &names)?;
        build(&section)
    }

    /// Builds a `[[stage]]` with the builder its `kind` names.
    pub fn build_stage(&self, stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
        match self.stages.iter().find(|(k, _)| *k == stage.kind) {
            Some((_, build)) => build(stage),
            None => Err(ConfigError(format!(
                "{}: [[stage]] {}: unknown kind {:?}: expected one of {}",
                stage.place,
                stage.index,
                stage.kind,
                self.stage_names()
            ))),
        }
    }

    /// Builds `[sink]` with the builder its `kind` names.
    pub fn build_sink(&self, section: &RawSection) -> Result<SinkPlan, ConfigError> {
        let (build, section) = pick(&self.sinks, section, "[sink]", &self.sink_names())?;
        build(&section)
    }

    /// The stage kinds, for messages.
    pub fn stage_names(&self) -> String {
        let names: Vec<&str> = self.stages.iter().map(|(k, _)| *k).collect();
        names.join(", ")
    }

    /// The sink kinds, for messages.
    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|(k, _)| *k).collect()
    }
}

/// The builder `section`'s kind names, and the section without its `kind`.
fn pick<B: Copy>(
    builders: &[(&'static str, B)],
    section: &RawSection,
    what: &str,
    names: &[&str],
) -> Result<(B, RawSection), ConfigError> {
    let place = &section.place;
    let kind = match section.table.get("kind") {
        Some(toml::Value::String(kind)) => kind.as_str(),
        _ => {
            return Err(ConfigError(format!(
                "{place}: {what}: needs a kind: one of {}",
                names.join(", ")
            )))
        }
    };
    let Some((_, build)) = builders.iter().find(|(k, _)| *k == kind) else {
        return Err(ConfigError(format!(
            "{place}: {what}: unknown kind {kind:?}: expected one of {}",
            names.join(", ")
        )));
    };
    let mut rest = section.clone();
    rest.table.remove("kind");
    Ok((*build, rest))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathOnly {
    path: PathBuf,
}

fn lines_source(s: &RawSection) -> Result<SourcePlan, ConfigError> {
    let spec: PathOnly = super::section(&s.table, "[source] (lines)", &s.place)?;
    Ok(SourcePlan::Items(SourceSpec::Lines { path: spec.path }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlSource {
    path: PathBuf,
    key: Option<String>,
}

fn jsonl_source(s: &RawSection) -> Result<SourcePlan, ConfigError> {
    let spec: JsonlSource = super::section(&s.table, "[source] (jsonl)", &s.place)?;
    Ok(SourcePlan::Items(SourceSpec::Jsonl {
        path: spec.path,
        key: spec.key,
    }))
}

#[cfg(feature = "parquet")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParquetSource {
    path: PathBuf,
    #[serde(default)]
    columns: Vec<String>,
    key: Option<String>,
    #[serde(default = "default_batch_rows")]
    batch_rows: usize,
}

#[cfg(feature = "parquet")]
fn default_batch_rows() -> usize {
    8192
}

#[cfg(feature = "parquet")]
fn parquet_source(s: &RawSection) -> Result<SourcePlan, ConfigError> {
    let spec: ParquetSource = super::section(&s.table, "[source] (parquet)", &s.place)?;
    Ok(SourcePlan::Items(SourceSpec::Parquet {
        path: spec.path,
        columns: spec.columns,
        key: spec.key,
        batch_rows: spec.batch_rows.max(1),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesSource {
    path: PathBuf,
    #[serde(default)]
    extensions: Vec<String>,
}

fn files_source(s: &RawSection) -> Result<SourcePlan, ConfigError> {
    let spec: FilesSource = super::section(&s.table, "[source] (files)", &s.place)?;
    Ok(SourcePlan::Items(SourceSpec::Files {
        path: spec.path,
        extensions: spec.extensions,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecSection {
    command: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

fn exec_stage(stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
    let spec: ExecSection = stage.spec()?;
    if spec.command.is_empty() {
        return Err(stage.error("command is empty"));
    }
    let mut exec = ExecStage::new(&stage.name, spec.command, stage.options.clone());
    exec.env = spec.env.into_iter().collect();
    Ok(Arc::new(move || Box::new(exec.clone()) as RecordStage))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartsSection {
    path: PathBuf,
    key_field: Option<String>,
    part_items: Option<usize>,
    explode: Option<String>,
}

fn parts_sink(s: &RawSection, format: PartFormat) -> Result<SinkPlan, ConfigError> {
    let spec: PartsSection = super::section(&s.table, "[sink]", &s.place)?;
    if spec.part_items == Some(0) {
        return Err(ConfigError(format!(
            "{}: [sink]: part_items must be at least 1",
            s.place
        )));
    }
    Ok(SinkPlan::Parts(Parts {
        dir: spec.path,
        format,
        part_items: spec.part_items.unwrap_or(10_000),
        explode: spec.explode,
        key_field: spec.key_field,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PipelineConfig, RawConfig};
    use crate::{map, Progress};

    /// A kind from "another crate": upper-cases the `text` field.
    fn upper(stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
        let (name, options) = (stage.name.clone(), stage.options.clone());
        Ok(Arc::new(move || {
            Box::new(map(&name, options.clone(), |r: &Record| {
                let mut r = r.clone();
                let text = r["text"].as_str().unwrap_or_default().to_uppercase();
                r["text"] = text.into();
                Ok::<_, ItemError>(r)
            })) as RecordStage
        }))
    }

    fn config(dir: &std::path::Path, stage: &str, sink: &str) -> RawConfig {
        let input = dir.join("in.jsonl");
        std::fs::write(&input, "{\"id\": \"a\", \"text\": \"x\"}\n").unwrap();
        let text = format!(
            "[source]\nkind = \"jsonl\"\npath = \"{}\"\nkey = \"id\"\n\n[[stage]]\nkind = \
             \"{stage}\"\n\n[sink]\nkind = \"{sink}\"\npath = \"{}\"\n",
            input.display(),
            dir.join("out").display()
        );
        RawConfig::parse("p.toml".as_ref(), &text, &[]).unwrap()
    }

    #[test]
    fn a_registered_stage_kind_is_built_and_run_like_the_engines_own() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::default().stage("upper", upper);
        let mut pipeline =
            PipelineConfig::from_raw_with(config(dir.path(), "upper", "jsonl"), &registry).unwrap();
        pipeline.options.progress = Progress::Off;
        assert_eq!(pipeline.run().unwrap().items_out, 1);
        let part = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "jsonl") && !p.ends_with("_failures.jsonl")
            })
            .unwrap();
        let line = std::fs::read_to_string(part).unwrap();
        assert!(line.contains("\"text\":\"X\""), "{line}");

        // Without the kind, the message lists what there is.
        let e = PipelineConfig::from_raw_with(
            config(dir.path(), "upper", "jsonl"),
            &Registry::default(),
        )
        .err()
        .unwrap();
        assert!(
            e.0.contains("p.toml:6: [[stage]] 0: unknown kind \"upper\": expected one of exec"),
            "{e}"
        );
    }

    #[test]
    fn unknown_source_and_sink_kinds_list_every_registered_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = config(dir.path(), "upper", "csv");
        let registry = Registry::default()
            .stage("upper", upper)
            .elsewhere("match_files");
        let e = PipelineConfig::from_raw_with(raw.clone(), &registry)
            .err()
            .unwrap();
        assert!(
            e.0.contains("p.toml:9: [sink]: unknown kind \"csv\": expected one of jsonl"),
            "{e}"
        );
        raw.source.table.insert("kind".into(), "tsv".into());
        let e = PipelineConfig::from_raw_with(raw, &registry).err().unwrap();
        assert!(
            e.0.contains(
                "p.toml:1: [source]: unknown kind \"tsv\": expected one of lines, jsonl, files"
            ),
            "{e}"
        );
        assert!(e.0.ends_with("match_files"), "{e}");
    }

    #[test]
    fn part_items_of_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = config(dir.path(), "upper", "jsonl");
        raw.sink
            .as_mut()
            .unwrap()
            .table
            .insert("part_items".into(), 0.into());
        let e = PipelineConfig::from_raw_with(raw, &Registry::default().stage("upper", upper))
            .err()
            .unwrap();
        assert!(e.0.contains("[sink]: part_items must be at least 1"), "{e}");
    }
}
