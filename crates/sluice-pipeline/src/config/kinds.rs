//! The engine's own kinds, built from their sections: the sources read once (`lines`, `jsonl`,
//! `parquet`, `files`), the `exec` stage, and the part-file sinks (`jsonl`, `parquet`). Brokers
//! and tables register theirs from their own modules (`nats`, `postgres`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::doc::{Kind, KindDoc};
use super::{
    section, ConfigError, RawSection, RawStage, RecordStage, RecordStageFactory, SinkBuilder,
    SourceBuilder,
};
use crate::connector::{DoneCheck, SinkConfig, SourceConfig};
use crate::stages::{read_source, ExecStage, Record, SourceItems, SourceSpec};
use crate::{PartFormat, PartSink, RunError, Sink, SinkError};

impl SourceConfig for SourceSpec {
    fn key_field(&self) -> Option<&str> {
        match self {
            SourceSpec::Jsonl { key, .. } => key.as_deref(),
            #[cfg(feature = "parquet")]
            SourceSpec::Parquet { key, .. } => key.as_deref(),
            _ => None,
        }
    }

    fn open(&self) -> Result<SourceItems, RunError> {
        read_source(self).map_err(RunError::Source)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathOnly {
    path: PathBuf,
}

pub(super) fn lines_source() -> Kind<SourceBuilder> {
    let doc = KindDoc::of::<PathOnly>(
        "each line of a text file as `{\"line\": ...}`, keyed by its number",
    );
    Kind::new(doc, |s| {
        let spec: PathOnly = section(&s.table, "[source] (lines)", &s.place)?;
        Ok(Arc::new(SourceSpec::Lines { path: spec.path }))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlSource {
    path: PathBuf,
    key: Option<String>,
}

pub(super) fn jsonl_source() -> Kind<SourceBuilder> {
    let doc = KindDoc::of::<JsonlSource>(
        "one JSON object per line, keyed by its field `key` or by its line number",
    );
    Kind::new(doc, |s| {
        let spec: JsonlSource = section(&s.table, "[source] (jsonl)", &s.place)?;
        Ok(Arc::new(SourceSpec::Jsonl {
            path: spec.path,
            key: spec.key,
        }))
    })
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
pub(super) fn parquet_source() -> Kind<SourceBuilder> {
    let doc = KindDoc::of::<ParquetSource>(
        "the rows of a Parquet file, or of the `.parquet` files under a directory or prefix",
    );
    Kind::new(doc, |s| {
        let spec: ParquetSource = section(&s.table, "[source] (parquet)", &s.place)?;
        Ok(Arc::new(SourceSpec::Parquet {
            path: spec.path,
            columns: spec.columns,
            key: spec.key,
            batch_rows: spec.batch_rows.max(1),
        }))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesSource {
    path: PathBuf,
    #[serde(default)]
    extensions: Vec<String>,
}

pub(super) fn files_source() -> Kind<SourceBuilder> {
    let doc = KindDoc::of::<FilesSource>(
        "each file under a directory as `{\"path\": ..., \"relpath\": ...}`, keyed by its \
         relative path",
    );
    Kind::new(doc, |s| {
        let spec: FilesSource = section(&s.table, "[source] (files)", &s.place)?;
        Ok(Arc::new(SourceSpec::Files {
            path: spec.path,
            extensions: spec.extensions,
        }))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecSection {
    command: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

pub(super) fn exec_doc() -> KindDoc {
    KindDoc::of::<ExecSection>("a program in any language reading and writing JSON lines")
}

pub(super) fn exec_stage(stage: &RawStage) -> Result<RecordStageFactory, ConfigError> {
    let spec: ExecSection = stage.spec()?;
    if spec.command.is_empty() {
        return Err(stage.error("command is empty"));
    }
    let mut exec = ExecStage::new(&stage.name, spec.command, stage.options.clone());
    exec.env = spec.env.into_iter().collect();
    Ok(Arc::new(move || Box::new(exec.clone()) as RecordStage))
}

/// Part files: `[sink] kind = "jsonl" | "parquet"`.
#[derive(Clone)]
pub struct Parts {
    dir: PathBuf,
    format: PartFormat,
    part_items: usize,
    explode: Option<String>,
    key_field: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartsSection {
    path: PathBuf,
    key_field: Option<String>,
    part_items: Option<usize>,
    explode: Option<String>,
}

pub(super) fn parts_sink(format: PartFormat) -> Kind<SinkBuilder> {
    let doc = KindDoc::of::<PartsSection>(
        "part files in a directory, each renamed into place when full; reruns skip their keys",
    );
    let build: SinkBuilder = match format {
        PartFormat::Jsonl => |s| parts(s, PartFormat::Jsonl),
        #[cfg(feature = "parquet")]
        PartFormat::Parquet => |s| parts(s, PartFormat::Parquet),
    };
    Kind::new(doc, build)
}

fn parts(s: &RawSection, format: PartFormat) -> Result<Arc<dyn SinkConfig>, ConfigError> {
    let spec: PartsSection = section(&s.table, "[sink]", &s.place)?;
    if spec.part_items == Some(0) {
        return Err(ConfigError::invalid(
            &s.place,
            "[sink]",
            "part_items must be at least 1",
        ));
    }
    Ok(Arc::new(Parts {
        dir: spec.path,
        format,
        part_items: spec.part_items.unwrap_or(10_000),
        explode: spec.explode,
        key_field: spec.key_field,
    }))
}

impl SinkConfig for Parts {
    fn key_field(&self) -> Option<&str> {
        self.key_field.as_deref()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn open(&self, key_field: &str, tag: &str) -> Result<Box<dyn Sink<Record>>, SinkError> {
        let sink = PartSink::new(self.format, &self.dir, key_field, self.part_items, tag)?;
        Ok(Box::new(match &self.explode {
            Some(field) => sink.explode(field),
            None => sink,
        }))
    }

    fn flush_items(&self) -> usize {
        self.part_items
    }

    fn done_check(&self, key_field: &str) -> Result<Option<DoneCheck>, SinkError> {
        let (dir, format, key_field) = (self.dir.clone(), self.format, key_field.to_owned());
        Ok(Some(Box::new(move || {
            PartSink::keys_in(&dir, format, &key_field).map(Some)
        })))
    }
}
