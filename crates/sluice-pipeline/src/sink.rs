//! Where a pipeline's outputs go. Sinks run on the run's collecting thread, so they need no locks.
//! File sinks write a temporary file in the destination directory and rename it into place, so a
//! killed run leaves complete files or none, and they can say which keys are already done so that
//! a rerun skips them.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::{Envelope, SinkError};

/// Tells whether an item's output already exists.
pub type Completed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The end of a pipeline.
pub trait Sink<T>: Send {
    /// Takes one output.
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError>;

    /// Makes everything written durable; called once at the end of a run, aborted or not.
    fn finish(&mut self) -> Result<(), SinkError>;

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

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".sluice-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    {
        let mut out = BufWriter::new(tmp.as_file_mut());
        write(&mut out)?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The key of a JSON record as text: strings as they are, anything else as JSON.
pub fn key_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// JSON Lines output in part files (`part-<run>-<n>.jsonl`), each renamed into place when full.
///
/// Every record carries its key in `key_field` (added when the record lacks it), which is how a
/// rerun learns what is done: it reads the keys of the existing parts.
pub struct JsonlSink {
    dir: PathBuf,
    key_field: String,
    part_items: usize,
    prefix: String,
    parts: usize,
    buffer: Vec<u8>,
    buffered: usize,
}

impl JsonlSink {
    /// Writes parts of up to `part_items` records into `dir`; `tag` (e.g. the shard) keeps the
    /// names of concurrent writers apart.
    pub fn new(
        dir: impl Into<PathBuf>,
        key_field: &str,
        part_items: usize,
        tag: &str,
    ) -> Result<Self, SinkError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| SinkError::io(&dir, e))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(JsonlSink {
            dir,
            key_field: key_field.to_string(),
            part_items: part_items.max(1),
            prefix: format!("part-{tag}{}", stamp.as_millis()),
            parts: 0,
            buffer: Vec::new(),
            buffered: 0,
        })
    }

    /// Part files present in `dir` now.
    pub fn part_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut parts = Vec::new();
        if dir.exists() {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("part-") && name.ends_with(".jsonl") {
                    parts.push(path);
                }
            }
        }
        parts.sort();
        Ok(parts)
    }

    fn flush_part(&mut self) -> Result<(), SinkError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("{}-{:05}.jsonl", self.prefix, self.parts));
        write_atomic(&path, |out| out.write_all(&self.buffer))
            .map_err(|e| SinkError::io(&path, e))?;
        self.parts += 1;
        self.buffer.clear();
        self.buffered = 0;
        Ok(())
    }
}

impl<T: Serialize> Sink<T> for JsonlSink {
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        let mut value =
            serde_json::to_value(&item.value).map_err(|e| SinkError::Encode(e.to_string()))?;
        match &mut value {
            serde_json::Value::Object(map) => {
                map.entry(self.key_field.clone())
                    .or_insert_with(|| item.key.to_string().into());
            }
            other => {
                let inner = other.take();
                value = serde_json::json!({ self.key_field.clone(): &*item.key, "value": inner });
            }
        }
        serde_json::to_writer(&mut self.buffer, &value)
            .map_err(|e| SinkError::Encode(e.to_string()))?;
        self.buffer.push(b'\n');
        self.buffered += 1;
        if self.buffered >= self.part_items {
            self.flush_part()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.flush_part()
    }

    fn completed(&mut self) -> Result<Option<Completed>, SinkError> {
        let mut done = HashSet::new();
        for path in Self::part_files(&self.dir).map_err(|e| SinkError::io(&self.dir, e))? {
            let file = File::open(&path).map_err(|e| SinkError::io(&path, e))?;
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| SinkError::io(&path, e))?;
                let record: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                    SinkError::Encode(format!(
                        "{}:{}: not a JSON record: {e}",
                        path.display(),
                        n + 1
                    ))
                })?;
                match record.get(&self.key_field) {
                    Some(k) => done.insert(key_text(k)),
                    None => {
                        return Err(SinkError::Encode(format!(
                            "{}:{}: record has no {:?} field, so a rerun cannot tell which items are done",
                            path.display(),
                            n + 1,
                            self.key_field
                        )))
                    }
                };
            }
        }
        Ok(Some(Arc::new(move |key: &str| done.contains(key))))
    }
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
