//! The one place every source, stage and sink kind of a record pipeline is built from its section
//! (as Vector's `*Config::build`): the engine's own kinds are registered in
//! [`Registry::default`] exactly as crates above it add theirs, so a new kind is one builder
//! function and one line here or in that crate. Builders return the running form's config as a
//! trait object ([`SourceConfig`], [`SinkConfig`]) that the engine asks for its capabilities.
//!
//! [`Kinds`] is the table behind each of the registry's three lists, and the one other families
//! of pipeline (audio) build their own kinds with, so every kind is looked up, listed and refused
//! the same way.

use std::sync::Arc;

use super::doc::{Kind, KindDoc, SinkBuilder, SourceBuilder};
use super::{kinds, ConfigError, ConfigProblem, RawSection, RawStage};
use crate::connector::{SinkConfig, SourceConfig};
use crate::stages::Record;
use crate::{ItemError, PartFormat, Stage, StageOptions};

/// A record stage defined outside this crate: a fresh instance per worker.
pub type RecordStage = Box<dyn Stage<In = Record, Out = Record>>;

/// Makes one [`RecordStage`] per worker.
pub type RecordStageFactory = Arc<dyn Fn() -> RecordStage + Send + Sync>;

/// Builds a stage of one kind from its `[[stage]]` table (a closure, so a crate can register a
/// builder holding its command line's defaults).
pub type StageBuilder =
    Arc<dyn Fn(&RawStage) -> Result<RecordStageFactory, ConfigError> + Send + Sync>;

/// Builds a sink of one kind from an output URL (`postgres://...?table=t`) and the settings
/// the command chose, which the URL may override.
pub type UrlSinkBuilder = fn(&str, &[(&str, &str)]) -> Result<Arc<dyn SinkConfig>, ConfigError>;

/// Kinds of one part of a pipeline file (its sources, stages or sinks), each with its builder
/// and what it says about itself.
#[derive(Clone)]
pub struct Kinds<B> {
    /// How messages name the part: `[source]`, `[sink]`.
    what: &'static str,
    entries: Vec<(&'static str, Kind<B>)>,
}

impl<B: Clone> Kinds<B> {
    /// An empty table for the part messages call `what`.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            entries: Vec::new(),
        }
    }

    /// Adds (or replaces) a kind.
    pub fn add(&mut self, name: &'static str, kind: Kind<B>) {
        self.entries.retain(|(k, _)| *k != name);
        self.entries.push((name, kind));
    }

    /// With a kind added.
    pub fn with(mut self, name: &'static str, kind: Kind<B>) -> Self {
        self.add(name, kind);
        self
    }

    /// The builder of `kind`.
    pub fn get(&self, kind: &str) -> Option<&B> {
        self.entries
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, b)| &b.build)
    }

    /// How messages name the part.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// Every kind with what it says about itself, in registration order.
    pub fn docs(&self) -> impl Iterator<Item = (&'static str, &KindDoc)> {
        self.entries.iter().map(|(k, b)| (*k, &b.doc))
    }

    /// The kinds, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|(k, _)| *k).collect()
    }

    /// The builder `section`'s kind names, and the section without its `kind`; `also` are kinds
    /// named in messages that another family builds.
    pub fn pick(
        &self,
        section: &RawSection,
        also: &[&'static str],
    ) -> Result<(B, RawSection), ConfigError> {
        let (what, place) = (self.what, &section.place);
        let mut names = self.names();
        names.extend(also);
        let kind = match section.table.get("kind") {
            Some(toml::Value::String(kind)) => kind.as_str(),
            _ => {
                return Err(ConfigError::new(
                    place,
                    ConfigProblem::MissingKind {
                        part: what.into(),
                        expected: format!("one of {}", names.join(", ")),
                    },
                ))
            }
        };
        let Some(build) = self.get(kind) else {
            return Err(self.unknown(place, kind, &names));
        };
        let mut rest = section.clone();
        rest.table.remove("kind");
        Ok((build.clone(), rest))
    }

    /// The error for a kind not in the table.
    fn unknown(&self, place: &str, kind: &str, names: &[&str]) -> ConfigError {
        ConfigError::new(
            place,
            ConfigProblem::UnknownKind {
                part: self.what.into(),
                kind: kind.into(),
                expected: format!("expected one of {}", names.join(", ")),
            },
        )
    }
}

/// The kinds a record pipeline file may name, each with its builder.
#[derive(Clone)]
pub struct Registry {
    sources: Kinds<SourceBuilder>,
    stages: Kinds<StageBuilder>,
    sinks: Kinds<SinkBuilder>,
    /// Sinks that output URLs name by their scheme (`postgres://`).
    url_sinks: Vec<(&'static str, UrlSinkBuilder)>,
    /// Source kinds that make another family of pipeline (audio), named in messages only.
    elsewhere: Vec<&'static str>,
}

impl Default for Registry {
    /// The engine's own kinds: `lines`, `jsonl`, `files`, `parquet` and `nats` sources, `exec`
    /// stages, `jsonl`, `parquet`, `nats` and `postgres` sinks (as this build's features allow).
    fn default() -> Self {
        let registry = Registry {
            sources: Kinds::new("[source]"),
            stages: Kinds::new("[[stage]]"),
            sinks: Kinds::new("[sink]"),
            url_sinks: Vec::new(),
            elsewhere: Vec::new(),
        }
        .source("lines", kinds::lines_source())
        .source("jsonl", kinds::jsonl_source())
        .source("files", kinds::files_source())
        .stage("exec", kinds::exec_doc(), kinds::exec_stage)
        .sink("jsonl", kinds::parts_sink(PartFormat::Jsonl));
        #[cfg(feature = "parquet")]
        let registry = registry
            .source("parquet", kinds::parquet_source())
            .sink("parquet", kinds::parts_sink(PartFormat::Parquet));
        #[cfg(feature = "nats")]
        let registry = registry
            .source("nats", crate::nats::source())
            .sink("nats", crate::nats::sink());
        #[cfg(feature = "postgres")]
        let registry = registry
            .sink("postgres", crate::postgres::sink())
            .url_sink("postgres", crate::postgres::url_sink)
            .url_sink("postgresql", crate::postgres::url_sink);
        registry
    }
}

impl Registry {
    /// Adds (or replaces) a source kind.
    pub fn source(mut self, name: &'static str, kind: Kind<SourceBuilder>) -> Self {
        self.sources.add(name, kind);
        self
    }

    /// Adds (or replaces) a stage kind, documented by `doc`.
    pub fn stage(
        mut self,
        name: &'static str,
        doc: KindDoc,
        build: impl Fn(&RawStage) -> Result<RecordStageFactory, ConfigError> + Send + Sync + 'static,
    ) -> Self {
        let build: StageBuilder = Arc::new(build);
        self.stages.add(name, Kind::new(doc, build));
        self
    }

    /// Adds (or replaces) a sink kind.
    pub fn sink(mut self, name: &'static str, kind: Kind<SinkBuilder>) -> Self {
        self.sinks.add(name, kind);
        self
    }

    /// The source, stage and sink kinds, each with what it says about itself.
    pub fn parts(&self) -> [(&'static str, Vec<(&'static str, &KindDoc)>); 3] {
        [
            (self.sources.what(), self.sources.docs().collect()),
            (self.stages.what(), self.stages.docs().collect()),
            (self.sinks.what(), self.sinks.docs().collect()),
        ]
    }

    /// Lets output URLs of `scheme` (`postgres` for `postgres://...`) name a sink, built by
    /// `build`.
    pub fn url_sink(mut self, scheme: &'static str, build: UrlSinkBuilder) -> Self {
        self.url_sinks.retain(|(s, _)| *s != scheme);
        self.url_sinks.push((scheme, build));
        self
    }

    /// Names a source kind that another family of pipeline reads (so messages list it).
    pub fn elsewhere(mut self, kind: &'static str) -> Self {
        self.elsewhere.push(kind);
        self
    }

    /// Builds `[source]` with the builder its `kind` names.
    pub fn build_source(&self, section: &RawSection) -> Result<Arc<dyn SourceConfig>, ConfigError> {
        let kind = section.table.get("kind").and_then(|k| k.as_str());
        if let Some(other) = kind.filter(|k| self.elsewhere.contains(k)) {
            return Err(ConfigError::invalid(
                &section.place,
                "[source]",
                format!(
                    "kind {other:?} makes another kind of pipeline than this command runs (run \
                     it with `sluice run`)"
                ),
            ));
        }
        let (build, section) = self.sources.pick(section, &self.elsewhere)?;
        build(&section)
    }

    /// Builds a `[[stage]]` with the builder its `kind` names.
    pub fn build_stage(&self, stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
        match self.stages.get(&stage.kind) {
            Some(build) => build(stage),
            None => Err(ConfigError::new(
                &stage.place,
                ConfigProblem::UnknownKind {
                    part: format!("[[stage]] {}", stage.index),
                    kind: stage.kind.clone(),
                    expected: format!("expected one of {}", self.stage_names()),
                },
            )),
        }
    }

    /// Builds `[sink]` with the builder its `kind` names; returns the kind with it.
    pub fn build_sink(
        &self,
        section: &RawSection,
    ) -> Result<(String, Arc<dyn SinkConfig>), ConfigError> {
        let (build, rest) = self.sinks.pick(section, &[])?;
        let kind = section
            .table
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        Ok((kind.to_owned(), build(&rest)?))
    }

    /// The sink an output URL names by its scheme, with the command's settings `defaults`
    /// (which the URL may override); `None` when no sink takes the URL's scheme.
    pub fn sink_for_url(
        &self,
        url: &str,
        defaults: &[(&str, &str)],
    ) -> Option<Result<Arc<dyn SinkConfig>, ConfigError>> {
        let (scheme, _) = url.split_once("://")?;
        let (_, build) = self.url_sinks.iter().find(|(s, _)| *s == scheme)?;
        Some(build(url, defaults))
    }

    /// The stage kinds, for messages.
    pub fn stage_names(&self) -> String {
        self.stages.names().join(", ")
    }

    /// The sink kinds, for messages.
    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.names()
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
        let registry = Registry::default().stage("upper", KindDoc::bare("upper-cases text"), upper);
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
            e.to_string()
                .contains("p.toml:6: [[stage]] 0: unknown kind \"upper\": expected one of exec"),
            "{e}"
        );
    }

    #[test]
    fn unknown_source_and_sink_kinds_list_every_registered_kind() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = config(dir.path(), "upper", "csv");
        let registry = Registry::default()
            .stage("upper", KindDoc::bare("upper-cases text"), upper)
            .elsewhere("match_files");
        let e = PipelineConfig::from_raw_with(raw.clone(), &registry)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("p.toml:9: [sink]: unknown kind \"csv\": expected one of jsonl"),
            "{e}"
        );
        raw.source.table.insert("kind".into(), "tsv".into());
        let e = PipelineConfig::from_raw_with(raw, &registry).err().unwrap();
        assert!(
            e.to_string().contains(
                "p.toml:1: [source]: unknown kind \"tsv\": expected one of lines, jsonl, files"
            ),
            "{e}"
        );
        assert!(e.to_string().ends_with("match_files"), "{e}");
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
        let e = PipelineConfig::from_raw_with(
            raw,
            &Registry::default().stage("upper", KindDoc::bare("upper-cases text"), upper),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .contains("[sink]: part_items must be at least 1"),
            "{e}"
        );
    }
}
