//! Built-in sources: lines of a text file, records of a JSON-lines file, or the files under a
//! directory. Each yields `(key, record)` pairs lazily so that a large input is never held whole.

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

/// `(key, record)` pairs, or why a line could not be read.
pub type SourceItems = Box<dyn Iterator<Item = Result<(String, Record), String>> + Send>;

/// Opens the source; lines that are not JSON objects come out as errors with their line number.
pub fn read_source(spec: &SourceSpec) -> std::io::Result<SourceItems> {
    match spec {
        SourceSpec::Lines { path } => {
            let reader = BufReader::new(File::open(path).map_err(|e| with_path(path, e))?);
            let path = path.clone();
            Ok(Box::new(reader.lines().enumerate().map(
                move |(i, line)| {
                    let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
                    Ok(((i + 1).to_string(), serde_json::json!({ "line": line })))
                },
            )))
        }
        SourceSpec::Jsonl { path, key } => {
            let reader = BufReader::new(File::open(path).map_err(|e| with_path(path, e))?);
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

fn with_path(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
