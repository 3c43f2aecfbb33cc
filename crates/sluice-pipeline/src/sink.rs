//! Where a pipeline's outputs go. Sinks run on the run's collecting thread, so they need no locks.
//! File sinks write a temporary file in the destination directory and rename it into place, so a
//! killed run leaves complete files or none, and they can say which keys are already done so that
//! a rerun skips them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use crate::keys::key_text;
use crate::keys::missing_key;
use crate::{Envelope, SinkError};
use sluice_core::fs::write_atomic;
use sluice_core::storage::{is_object_url, write_output, Location, Matcher, StorageError};

/// Tells whether an item's output already exists.
pub type Completed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The end of a pipeline.
pub trait Sink<T>: Send {
    /// Takes one output.
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError>;

    /// Makes everything written durable; called once at the end of a run, aborted or not.
    fn finish(&mut self) -> Result<(), SinkError>;

    /// Makes everything written so far durable now, for callers that acknowledge inputs once
    /// their outputs are safe (the NATS worker); the sink stays open.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Called in streaming runs when no output arrived for a moment, so that a sink holding
    /// outputs can flush on time.
    fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Which keys are already done, for `skip_completed`; `None` when this sink cannot tell.
    fn completed(&mut self) -> Result<Option<Completed>, SinkError> {
        Ok(None)
    }
}

/// Keeps outputs in memory, for tests and small jobs.
#[derive(Debug)]
pub struct VecSink<T>(pub Vec<Envelope<T>>);

impl<T> Default for VecSink<T> {
    fn default() -> Self {
        VecSink(Vec::new())
    }
}

impl<T: Send> Sink<T> for VecSink<T> {
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        self.0.push(item);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// An output as a JSON record that carries its key in `key_field` (added when the record lacks it;
/// a value that is not a JSON object becomes `{key_field: key, "value": value}`), so that whoever
/// reads outputs back can tell which items are done. Row files the record names
/// ([`crate::rows`]) are read back into it.
pub fn keyed_record<T: Serialize>(
    item: &Envelope<T>,
    key_field: &str,
) -> Result<serde_json::Value, SinkError> {
    let mut value = keyed_value(item, key_field)?;
    crate::rows::inline(&mut value)?;
    Ok(value)
}

/// [`keyed_record`] with row-file references left as they are.
fn keyed_value<T: Serialize>(
    item: &Envelope<T>,
    key_field: &str,
) -> Result<serde_json::Value, SinkError> {
    let mut value = serde_json::to_value(&item.value)?;
    match &mut value {
        serde_json::Value::Object(map) => {
            map.entry(key_field.to_owned())
                .or_insert_with(|| item.key.to_string().into());
        }
        other => {
            let inner = other.take();
            value = serde_json::json!({ key_field: &*item.key, "value": inner });
        }
    }
    Ok(value)
}

/// The rows of one part, read as they are written: its buffered rows, then those of a record
/// whose exploded field is a row file, so a part of any length is written in bounded memory.
struct PartRows<'a> {
    buffered: &'a [serde_json::Value],
    tail: Option<&'a Tail>,
}

/// A record whose exploded field's elements are in a row file.
struct Tail {
    record: serde_json::Map<String, serde_json::Value>,
    field: String,
    file: PathBuf,
}

pub(crate) use crate::rows::RowIter;

impl PartRows<'_> {
    /// Every row of the part from the first (a part is read once per encoding pass).
    fn iter(&self) -> Result<RowIter<'_>, SinkError> {
        let buffered = self.buffered.iter().map(|row| Ok(Cow::Borrowed(row)));
        Ok(match self.tail {
            None => Box::new(buffered),
            Some(tail) => Box::new(buffered.chain(crate::rows::read(&tail.file)?.map(
                move |element| {
                    element.map(|e| Cow::Owned(exploded_row(&tail.record, &tail.field, e)))
                },
            ))),
        })
    }
}

/// The file format of a [`PartSink`]'s parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartFormat {
    /// JSON Lines, one record per line.
    Jsonl,
    /// Apache Parquet, one row group per part, schema inferred from the part's records.
    #[cfg(feature = "parquet")]
    Parquet,
}

impl PartFormat {
    /// The file extension of parts in this format.
    pub fn extension(self) -> &'static str {
        match self {
            PartFormat::Jsonl => "jsonl",
            #[cfg(feature = "parquet")]
            PartFormat::Parquet => "parquet",
        }
    }

    fn encode(self, rows: &PartRows, out: &mut (dyn Write + Send)) -> Result<(), SinkError> {
        match self {
            PartFormat::Jsonl => {
                for row in rows.iter()? {
                    serde_json::to_writer(&mut *out, &row?)?;
                    out.write_all(b"\n").map_err(SinkError::Write)?;
                }
                Ok(())
            }
            #[cfg(feature = "parquet")]
            PartFormat::Parquet => crate::parquet::encode(&|| rows.iter(), out),
        }
    }

    /// Appends the keys stored in the part `file` (named `path` in messages) to `done`.
    fn read_keys(
        self,
        file: File,
        path: &Path,
        key_field: &str,
        done: &mut HashSet<String>,
    ) -> Result<(), SinkError> {
        match self {
            PartFormat::Jsonl => {
                for (n, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|e| SinkError::io(path, e))?;
                    let record: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                        SinkError::Unreadable(format!(
                            "{}:{}: not a JSON record: {e}",
                            path.display(),
                            n + 1
                        ))
                    })?;
                    match record.get(key_field) {
                        Some(k) => done.insert(key_text(k)),
                        None => return Err(missing_key(path, Some(n + 1), key_field)),
                    };
                }
                Ok(())
            }
            #[cfg(feature = "parquet")]
            PartFormat::Parquet => crate::parquet::read_keys(file, path, key_field, done),
        }
    }
}

/// Records in part files (`part-<run>-<n>.<ext>`), each written whole and renamed into place, in
/// a local directory or under an object-storage prefix (each part uploaded whole).
///
/// Every record carries its key in `key_field` (added when the record lacks it; a record that is
/// not a JSON object becomes `{key_field: key, "value": record}`), which is how a rerun learns
/// what is done: it reads the keys of the existing parts.
pub struct PartSink {
    format: PartFormat,
    dir: PathBuf,
    key_field: String,
    part_items: usize,
    prefix: String,
    parts: usize,
    buffer: Vec<serde_json::Value>,
    explode: Option<String>,
}

impl PartSink {
    /// Writes parts of up to `part_items` records into `dir`; `tag` (e.g. the shard) keeps the
    /// names of concurrent writers apart.
    pub fn new(
        format: PartFormat,
        dir: impl Into<PathBuf>,
        key_field: &str,
        part_items: usize,
        tag: &str,
    ) -> Result<Self, SinkError> {
        let dir = dir.into();
        // Object storage has no directories: parts are objects under the prefix.
        if !is_object_url(&dir) {
            std::fs::create_dir_all(&dir).map_err(|e| SinkError::io(&dir, e))?;
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(PartSink {
            format,
            dir,
            key_field: key_field.to_string(),
            part_items: part_items.max(1),
            prefix: format!("part-{tag}{}", stamp.as_millis()),
            parts: 0,
            buffer: Vec::new(),
            explode: None,
        })
    }

    /// JSON Lines parts; see [`PartSink::new`].
    pub fn jsonl(
        dir: impl Into<PathBuf>,
        key_field: &str,
        part_items: usize,
        tag: &str,
    ) -> Result<Self, SinkError> {
        Self::new(PartFormat::Jsonl, dir, key_field, part_items, tag)
    }

    /// Writes one row per element of the array in `field` (each element's fields next to the
    /// record's other fields), for tables with a row per window or segment. A record whose
    /// array is empty writes no row, so a rerun does it again.
    pub fn explode(mut self, field: &str) -> Self {
        self.explode = Some(field.to_owned());
        self
    }

    /// Part files of `format` present in the local directory `dir` now.
    pub fn part_files(dir: &Path, format: PartFormat) -> std::io::Result<Vec<PathBuf>> {
        let suffix = format!(".{}", format.extension());
        let mut parts = Vec::new();
        if dir.exists() {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("part-") && name.ends_with(&suffix) {
                    parts.push(path);
                }
            }
        }
        parts.sort();
        Ok(parts)
    }

    /// Which keys the parts of `format` in `dir` (a local directory or an object-storage
    /// prefix) hold now.
    pub fn keys_in(
        dir: &Path,
        format: PartFormat,
        key_field: &str,
    ) -> Result<Completed, SinkError> {
        let mut done = HashSet::new();
        if is_object_url(dir) {
            let url = dir.to_string_lossy();
            let store = |e: StorageError| SinkError::Destination(format!("{url}: {e}"));
            let location = Location::parse(&url).map_err(store)?;
            let pattern = format!("part-*.{}", format.extension());
            let parts = location
                .list_blocking(&Matcher::glob(&pattern).map_err(store)?)
                .map_err(store)?;
            for part in parts {
                let file = location.open_blocking(&part.rel).map_err(store)?;
                format.read_keys(file, Path::new(&part.url), key_field, &mut done)?;
            }
        } else {
            for path in Self::part_files(dir, format).map_err(|e| SinkError::io(dir, e))? {
                let file = File::open(&path).map_err(|e| SinkError::io(&path, e))?;
                format.read_keys(file, &path, key_field, &mut done)?;
            }
        }
        Ok(Arc::new(move |key: &str| done.contains(key)))
    }

    fn flush_part(&mut self) -> Result<(), SinkError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.write_part(None)
    }

    /// Writes the buffered rows and then `tail`'s as the next part, whole or not at all.
    fn write_part(&mut self, tail: Option<&Tail>) -> Result<(), SinkError> {
        let path = self.dir.join(format!(
            "{}-{:05}.{}",
            self.prefix,
            self.parts,
            self.format.extension()
        ));
        let rows = PartRows {
            buffered: &self.buffer,
            tail,
        };
        let mut failed = None;
        let written = write_output(&path, |out| {
            self.format.encode(&rows, out).map_err(|e| {
                failed = Some(e);
                std::io::Error::other("encoding failed")
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        written.map_err(|e| SinkError::io(&path, e))?;
        self.parts += 1;
        self.buffer.clear();
        Ok(())
    }
}

impl<T: Serialize> Sink<T> for PartSink {
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        let mut value = keyed_value(&item, &self.key_field)?;
        if let Some(field) = self.explode.as_deref() {
            let file = value.get(field).and_then(crate::rows::row_file);
            if let Some(file) = file.map(Path::to_path_buf) {
                // Rows kept on disk by the stage: streamed into one part with the buffered ones,
                // so a key's rows are never split across parts.
                let serde_json::Value::Object(mut record) = value else {
                    unreachable!("a record with a field is an object")
                };
                record.remove(field);
                record.values_mut().try_for_each(crate::rows::inline)?;
                let tail = Tail {
                    record,
                    field: field.to_owned(),
                    file,
                };
                self.write_part(Some(&tail))?;
                let _ = std::fs::remove_file(&tail.file);
                return Ok(());
            }
        }
        crate::rows::inline(&mut value)?;
        match self.explode.as_deref() {
            Some(field) => explode(value, field, &mut self.buffer),
            None => self.buffer.push(value),
        }
        if self.buffer.len() >= self.part_items {
            self.flush_part()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.flush_part()
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.flush_part()
    }

    fn completed(&mut self) -> Result<Option<Completed>, SinkError> {
        Self::keys_in(&self.dir, self.format, &self.key_field).map(Some)
    }
}

/// Pushes one row per element of `record[field]`: the record without `field`, plus the element's
/// fields (or `field: element` when the element is not an object).
pub(crate) fn explode(
    mut record: serde_json::Value,
    field: &str,
    rows: &mut Vec<serde_json::Value>,
) {
    let Some(map) = record.as_object_mut() else {
        rows.push(record);
        return;
    };
    let elements = match map.remove(field) {
        Some(serde_json::Value::Array(a)) => a,
        Some(other) => vec![other],
        None => {
            rows.push(record);
            return;
        }
    };
    rows.extend(
        elements
            .into_iter()
            .map(|element| exploded_row(map, field, element)),
    );
}

/// One exploded row: `record` (without the exploded field) plus `element`'s fields.
fn exploded_row(
    record: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    element: serde_json::Value,
) -> serde_json::Value {
    let mut row = record.clone();
    match element {
        serde_json::Value::Object(fields) => row.extend(fields),
        other => {
            row.insert(field.to_owned(), other);
        }
    }
    serde_json::Value::Object(row)
}

/// One output file per item, `<dir>/<key><suffix>`, for outputs that are files in their own right.
pub struct FileSink<F> {
    dir: PathBuf,
    suffix: String,
    encode: F,
}

impl<F> FileSink<F> {
    /// Writes each item with `encode` to `<dir>/<key><suffix>`.
    pub fn new(dir: impl Into<PathBuf>, suffix: &str, encode: F) -> Self {
        FileSink {
            dir: dir.into(),
            suffix: suffix.to_string(),
            encode,
        }
    }

    fn path(dir: &Path, key: &str, suffix: &str) -> PathBuf {
        // Keys may be relative paths (`a/b.wav`); never let them climb out of the directory.
        let safe: PathBuf = Path::new(key)
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(part) => Some(part),
                _ => None,
            })
            .collect();
        dir.join(format!("{}{suffix}", safe.display()))
    }
}

impl<T, F> Sink<T> for FileSink<F>
where
    F: FnMut(&T, &mut dyn Write) -> std::io::Result<()> + Send,
{
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        let path = Self::path(&self.dir, &item.key, &self.suffix);
        write_atomic(&path, |out| (self.encode)(&item.value, out))
            .map_err(|e| SinkError::io(&path, e))
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn completed(&mut self) -> Result<Option<Completed>, SinkError> {
        let (dir, suffix) = (self.dir.clone(), self.suffix.clone());
        Ok(Some(Arc::new(move |key: &str| {
            Self::path(&dir, key, &suffix).exists()
        })))
    }
}
