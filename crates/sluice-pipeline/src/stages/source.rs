//! Built-in sources: lines of a text file, records of a JSON-lines file, rows of Parquet files, or
//! the files under a directory. Each yields `(key, record)` pairs lazily so that a large input is
//! never held whole. Text, JSON-lines and Parquet inputs may be objects (`s3://`, `gs://`,
//! `az://`, with credentials and endpoints from the environment), read from a temporary copy.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::keys::key_text;
use crate::stages::Record;

/// What to read.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Each line is a record `{"line": ...}` keyed by its line number (from 1).
    Lines {
        /// The text file.
        path: PathBuf,
    },
    /// Each line is a JSON object, keyed by `key` or by its line number.
    Jsonl {
        /// The JSON-lines file.
        path: PathBuf,
        /// The field holding each record's key.
        key: Option<String>,
    },
    /// Each row of a Parquet file, or of every `.parquet` file in a directory or under an
    /// object-storage prefix (ending in `/`), in name order, read `batch_rows` at a time and only
    /// the named `columns` (all when empty); keyed by `key`, else by `<file>:<row>`.
    #[cfg(feature = "parquet")]
    Parquet {
        /// A file, a directory, or an object or prefix URL.
        path: PathBuf,
        /// The columns read.
        columns: Vec<String>,
        /// The field holding each record's key.
        key: Option<String>,
        /// Rows decoded at a time.
        batch_rows: usize,
    },
    /// Each file under `path` (recursively) whose extension is listed (all when empty) is a
    /// record `{"path": ..., "relpath": ...}` keyed by its path relative to `path`.
    Files {
        /// The directory walked.
        path: PathBuf,
        /// Extensions kept, without the dot.
        extensions: Vec<String>,
    },
}

fn walk(dir: &Path, extensions: &[String], out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, extensions, out)?;
        } else {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if extensions.is_empty()
                || extensions
                    .iter()
                    .any(|e| e.trim_start_matches('.').eq_ignore_ascii_case(&ext))
            {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// `(key, record)` pairs, or why a record could not be read.
pub type SourceItems = Box<dyn Iterator<Item = Result<(String, Record), UnreadableRecord>> + Send>;

/// A record of the source that cannot be read, with where it is: it fails alone, as an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnreadableRecord(pub String);

/// The pairs as the readers below make them, their errors still text.
type Pairs = Box<dyn Iterator<Item = Result<(String, Record), String>> + Send>;

/// Opens the source; lines that are not JSON objects come out as errors with their line number.
pub fn read_source(spec: &SourceSpec) -> std::io::Result<SourceItems> {
    let pairs = read_pairs(spec)?;
    Ok(Box::new(pairs.map(|p| p.map_err(UnreadableRecord))))
}

fn read_pairs(spec: &SourceSpec) -> std::io::Result<Pairs> {
    match spec {
        SourceSpec::Lines { path } => {
            let reader = BufReader::new(open_input(path)?);
            let path = path.clone();
            Ok(Box::new(reader.lines().enumerate().map(
                move |(i, line)| {
                    let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
                    Ok(((i + 1).to_string(), serde_json::json!({ "line": line })))
                },
            )))
        }
        SourceSpec::Jsonl { path, key } => {
            let reader = BufReader::new(open_input(path)?);
            let (path, key) = (path.clone(), key.clone());
            Ok(Box::new(reader.lines().enumerate().filter_map(
                move |(i, line)| {
                    let at = || format!("{}:{}", path.display(), i + 1);
                    let line = match line {
                        Ok(line) if line.trim().is_empty() => return None,
                        Ok(line) => line,
                        Err(e) => return Some(Err(format!("{}: {e}", at()))),
                    };
                    Some(match serde_json::from_str::<Record>(&line) {
                        Ok(record @ Record::Object(_)) => match &key {
                            None => Ok(((i + 1).to_string(), record)),
                            Some(field) => match record.get(field) {
                                Some(k) => Ok((key_text(k), record)),
                                None => Err(format!("{}: record has no key field {field:?}", at())),
                            },
                        },
                        Ok(_) => Err(format!("{}: not a JSON object", at())),
                        Err(e) => Err(format!("{}: not JSON: {e}", at())),
                    })
                },
            )))
        }
        #[cfg(feature = "parquet")]
        SourceSpec::Parquet {
            path,
            columns,
            key,
            batch_rows,
        } => parquet_rows(path, columns.clone(), key.clone(), *batch_rows),
        SourceSpec::Files { path, extensions } => {
            let mut files = Vec::new();
            walk(path, extensions, &mut files).map_err(|e| with_path(path, e))?;
            files.sort();
            let root = path.clone();
            Ok(Box::new(files.into_iter().map(move |file| {
                let rel = file
                    .strip_prefix(&root)
                    .unwrap_or(&file)
                    .to_string_lossy()
                    .into_owned();
                Ok((
                    rel.clone(),
                    serde_json::json!({ "path": file.to_string_lossy(), "relpath": rel }),
                ))
            })))
        }
    }
}

/// A URL with a scheme (`s3://...`) names an object; anything else a local path.
fn object_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| p.contains("://"))
}

/// The input file: a local file, or an object copied to a temporary file.
fn open_input(path: &Path) -> std::io::Result<File> {
    match object_url(path) {
        Some(url) => sluice_core::storage::Location::open_url_blocking::<&str, &str>(url, &[])
            .map_err(|e| std::io::Error::other(format!("{url}: {e}"))),
        None => File::open(path).map_err(|e| with_path(path, e)),
    }
}

/// The Parquet files a source names, in name order, each as `(name, opener)`.
#[cfg(feature = "parquet")]
type ParquetFiles = Vec<(String, Box<dyn FnOnce() -> std::io::Result<File> + Send>)>;

#[cfg(feature = "parquet")]
fn parquet_files(path: &Path) -> std::io::Result<ParquetFiles> {
    use sluice_core::storage::{Location, Matcher};
    let is_parquet = |name: &str| name.to_ascii_lowercase().ends_with(".parquet");
    if let Some(url) = object_url(path) {
        if !url.ends_with('/') {
            let url = url.to_owned();
            let name = url.rsplit('/').next().unwrap_or(&url).to_owned();
            return Ok(vec![(name, Box::new(move || open_input(Path::new(&url))))]);
        }
        let dir = Location::parse_source(url)
            .map_err(|e| std::io::Error::other(format!("{url}: {e}")))?;
        let listed = dir
            .list_blocking(&Matcher::suffixes(&[".parquet"]))
            .map_err(|e| std::io::Error::other(format!("{url}: {e}")))?;
        let mut files: ParquetFiles = Vec::new();
        for entry in listed {
            let (dir, rel) = (dir.clone(), entry.rel.clone());
            files.push((
                entry.rel,
                Box::new(move || {
                    dir.open_blocking(&rel)
                        .map_err(|e| std::io::Error::other(format!("{rel}: {e}")))
                }),
            ));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(files);
    }
    if path.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| with_path(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_parquet)
            })
            .collect();
        names.sort();
        return Ok(names
            .into_iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let open: Box<dyn FnOnce() -> std::io::Result<File> + Send> =
                    Box::new(move || File::open(&p).map_err(|e| with_path(&p, e)));
                (name, open)
            })
            .collect());
    }
    let p = path.to_owned();
    let name = p
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(vec![(name, Box::new(move || open_input(&p)))])
}

/// The rows of the source's Parquet files, each file opened when the one before is done.
#[cfg(feature = "parquet")]
fn parquet_rows(
    path: &Path,
    columns: Vec<String>,
    key: Option<String>,
    batch_rows: usize,
) -> std::io::Result<Pairs> {
    let files = parquet_files(path)?;
    if files.is_empty() {
        return Err(std::io::Error::other(format!(
            "{}: no .parquet files there",
            path.display()
        )));
    }
    Ok(Box::new(files.into_iter().flat_map(move |(name, open)| {
        let (columns, key) = (columns.clone(), key.clone());
        let rows: Box<dyn Iterator<Item = Result<Record, String>> + Send> =
            match open().map_err(|e| e.to_string()).and_then(|file| {
                crate::parquet::read_rows(file, &columns, batch_rows)
                    .map_err(|e| format!("{name}: {e}"))
            }) {
                Ok(rows) => {
                    let name = name.clone();
                    Box::new(rows.map(move |r| r.map_err(|e| format!("{name}: {e}"))))
                }
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
        rows.enumerate().map(move |(i, row)| {
            let record = row?;
            let k = match &key {
                None => format!("{name}:{}", i + 1),
                Some(field) => match record.get(field) {
                    Some(v) if !v.is_null() => key_text(v),
                    _ => return Err(format!("{name}: row {} has no key field {field:?}", i + 1)),
                },
            };
            Ok((k, record))
        })
    })))
}

fn with_path(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
