//! Row files: a long list of rows that a stage writes to disk as it makes them, named in its
//! output record instead of held there.
//!
//! A classifier over a day-long recording makes 172,800 window rows from one input file. Held
//! in the record (then copied into JSON values and the sink's rows) they cost hundreds of MB, and
//! more the longer the file. A stage can instead write them to a [`RowsWriter`] in the run's
//! scratch directory ([`WorkerContext::scratch`](crate::WorkerContext::scratch)) and put the
//! reference [`RowsWriter::finish`] returns where the array would be. The reference is
//! `{"$rows": "<path>", "count": <n>}`; it travels through later stages, batch mode's spill and
//! ordering like any small value.
//!
//! Sinks resolve it: [`PartSink`](crate::PartSink) exploding that field streams the file into the
//! part being written (the part is still written whole and renamed into place, so a key's rows
//! are never split across parts), and every JSON sink reads other references back into arrays
//! ([`inline`]). A file is removed once a sink has read it; files left by failed items go with
//! the scratch directory when the run ends.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::SinkError;

/// The rows of a part, one at a time.
/// Buffered rows are lent, rows read from a row file owned: no pass copies the buffer.
pub(crate) type RowIter<'a> =
    Box<dyn Iterator<Item = Result<std::borrow::Cow<'a, Value>, SinkError>> + 'a>;

/// The field of a reference that names its row file.
const ROWS_FIELD: &str = "$rows";

/// Writes rows to a new JSON Lines file, one row per line.
pub struct RowsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    count: u64,
}

impl RowsWriter {
    /// Starts a new row file in `dir` (the run's scratch directory).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let (file, path) = tempfile::Builder::new()
            .prefix("rows-")
            .suffix(".jsonl")
            .tempfile_in(dir)?
            .keep()
            .map_err(|e| e.error)?;
        Ok(RowsWriter {
            path,
            out: BufWriter::new(file),
            count: 0,
        })
    }

    /// Appends one row. It is written as the JSON value it would be in a record (an `f32` as
    /// its exact `f64` widening), and numbers are read back exactly, so a row read back is the
    /// row a record would have held.
    pub fn push<T: Serialize>(&mut self, row: &T) -> std::io::Result<()> {
        let value = serde_json::to_value(row)?;
        serde_json::to_writer(&mut self.out, &value)?;
        self.out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Rows pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Closes the file and returns the reference to put in the record.
    pub fn finish(mut self) -> std::io::Result<Value> {
        self.out.flush()?;
        Ok(serde_json::json!({
            ROWS_FIELD: self.path.to_string_lossy(),
            "count": self.count,
        }))
    }

    /// Removes the file, for a stage whose item failed after it started writing.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The row file `value` refers to, when it is a reference made by [`RowsWriter::finish`].
pub fn row_file(value: &Value) -> Option<&Path> {
    let map = value.as_object()?;
    if map.len() != 2 || !map.contains_key("count") {
        return None;
    }
    map.get(ROWS_FIELD)?.as_str().map(Path::new)
}

/// The rows of the file at `path`, read one at a time.
pub(crate) fn read(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Value, SinkError>>, SinkError> {
    let file = File::open(path).map_err(|e| SinkError::io(path, e))?;
    let path = path.to_path_buf();
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .map(move |(n, line)| {
            let line = line.map_err(|e| SinkError::io(&path, e))?;
            serde_json::from_str(&line).map_err(|e| {
                SinkError::Unreadable(format!("{}:{}: not a JSON row: {e}", path.display(), n + 1))
            })
        }))
}

/// Replaces every row-file reference inside `value` with the array of its rows, and removes the
/// files read; for sinks that write a record whole.
pub fn inline(value: &mut Value) -> Result<(), SinkError> {
    if let Some(path) = row_file(value) {
        let path = path.to_path_buf();
        let rows = read(&path)?.collect::<Result<Vec<_>, _>>()?;
        *value = Value::Array(rows);
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    match value {
        Value::Object(map) => map.values_mut().try_for_each(inline),
        Value::Array(items) => items.iter_mut().try_for_each(inline),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_written_come_back_in_place_and_the_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RowsWriter::create(dir.path()).unwrap();
        for i in 0..3 {
            w.push(&json!({"start": i, "label": "tone"})).unwrap();
        }
        assert_eq!(w.count(), 3);
        let reference = w.finish().unwrap();
        let path = row_file(&reference).unwrap().to_path_buf();
        assert!(path.starts_with(dir.path()));
        let mut record = json!({"id": "a", "result": {"duration": 1.5, "windows": reference}});
        inline(&mut record).unwrap();
        assert_eq!(
            record,
            json!({"id": "a", "result": {"duration": 1.5, "windows": [
                {"start": 0, "label": "tone"},
                {"start": 1, "label": "tone"},
                {"start": 2, "label": "tone"},
            ]}})
        );
        assert!(!path.exists());
    }

    #[test]
    fn numbers_come_back_as_the_values_a_record_holds() {
        let dir = tempfile::tempdir().unwrap();
        let row = json!({"score": 0.1f32, "start": 1.0 / 3.0, "n": u64::MAX});
        let mut w = RowsWriter::create(dir.path()).unwrap();
        w.push(&(0.1f32, 1.0f64 / 3.0, u64::MAX)).unwrap();
        let mut back = w.finish().unwrap();
        inline(&mut back).unwrap();
        assert_eq!(back, json!([[0.1f32, 1.0 / 3.0, u64::MAX]]));
        assert_eq!(row["score"], back[0][0]);
    }

    #[test]
    fn only_a_reference_is_taken_for_one() {
        assert!(row_file(&json!({"$rows": "/x", "count": 1})).is_some());
        for not in [
            json!({"$rows": "/x"}),
            json!({"$rows": 3, "count": 1}),
            json!({"$rows": "/x", "count": 1, "more": true}),
            json!(["$rows", "count"]),
        ] {
            assert!(row_file(&not).is_none(), "{not}");
        }
        let mut plain = json!({"windows": [{"$rows": "not a reference"}]});
        let before = plain.clone();
        inline(&mut plain).unwrap();
        assert_eq!(plain, before);
    }

    #[test]
    fn a_damaged_row_file_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RowsWriter::create(dir.path()).unwrap();
        w.push(&json!({"a": 1})).unwrap();
        let reference = w.finish().unwrap();
        let path = row_file(&reference).unwrap().to_path_buf();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        let mut record = json!({"w": reference});
        let err = inline(&mut record).unwrap_err().to_string();
        assert!(err.contains(":2: not a JSON row"), "{err}");
    }
}
