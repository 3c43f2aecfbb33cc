//! Parquet parts for [`PartSink`](crate::sink::PartSink): JSON records become Arrow record
//! batches through `arrow-json` (schema inferred from the part's rows, so each part is
//! self-describing), decoded and written a chunk at a time by `parquet`'s `ArrowWriter` with
//! Snappy compression.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::SinkError;

fn encode_error(e: impl std::fmt::Display) -> SinkError {
    SinkError::Encode(format!("parquet: {e}"))
}

/// Rows handed to the Arrow decoder at a time, and the most rows of a row group, so that a part
/// of any length is encoded in bounded memory.
const CHUNK_ROWS: usize = 8192;

/// Writes the rows `rows` yields (JSON objects) as one Parquet file to `out`: a first pass infers
/// the schema from every row, a second decodes and writes them a chunk at a time.
pub(crate) fn encode<'a>(
    rows: &dyn Fn() -> Result<crate::rows::RowIter<'a>, SinkError>,
    out: &mut (dyn Write + Send),
) -> Result<(), SinkError> {
    let mut failed = None;
    let schema = arrow_json::reader::infer_json_schema_from_iterator(
        rows()?.map_while(|r| r.map_err(|e| failed = Some(e)).ok().map(Ok)),
    )
    .map_err(encode_error)?;
    if let Some(e) = failed {
        return Err(e);
    }
    let schema = Arc::new(schema);
    // Coercion lets a field seen as both numbers and strings land in its inferred Utf8 column.
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(CHUNK_ROWS)
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(encode_error)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(CHUNK_ROWS * 8))
        .build();
    let mut writer = ArrowWriter::try_new(out, schema, Some(props)).map_err(encode_error)?;
    let mut rows = rows()?;
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    loop {
        chunk.clear();
        for row in rows.by_ref().take(CHUNK_ROWS) {
            chunk.push(row?);
        }
        if chunk.is_empty() {
            break;
        }
        decoder.serialize(&chunk).map_err(encode_error)?;
        while let Some(batch) = decoder.flush().map_err(encode_error)? {
            writer.write(&batch).map_err(encode_error)?;
        }
    }
    writer.close().map_err(encode_error)?;
    Ok(())
}

/// Adds the `key_field` column of the Parquet part `file` (named `path` in messages) to `done`, as text: strings as they
/// are, numbers in their decimal form (as [`key_text`](crate::keys::key_text) renders JSON keys).
pub(crate) fn read_keys(
    file: File,
    path: &Path,
    key_field: &str,
    done: &mut HashSet<String>,
) -> Result<(), SinkError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        SinkError::Unreadable(format!(
            "{}: not a readable Parquet part: {e}",
            path.display()
        ))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| unreadable(&e))?;
    if builder.schema().field_with_name(key_field).is_err() {
        return Err(crate::keys::missing_key(path, None, key_field));
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), [key_field]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| unreadable(&e))?;
    for batch in reader {
        let batch = batch.map_err(|e| unreadable(&e))?;
        let keys =
            arrow_cast::cast(batch.column(0), &DataType::Utf8).map_err(|e| unreadable(&e))?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("a cast to Utf8 gives a StringArray");
        if keys.null_count() > 0 {
            return Err(crate::keys::missing_key(path, None, key_field));
        }
        done.extend(keys.iter().flatten().map(str::to_string));
    }
    Ok(())
}

/// The rows of a Parquet file as JSON objects, decoded `batch_rows` at a time and only the named
/// `columns` (all when empty; a name the file lacks is an error listing the columns it has).
pub(crate) fn read_rows(
    file: File,
    columns: &[String],
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<serde_json::Value, String>> + Send, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let mut builder = builder.with_batch_size(batch_rows.max(1));
    if !columns.is_empty() {
        let schema = builder.schema().clone();
        let mut wanted = Vec::with_capacity(columns.len());
        for c in columns {
            let Some(i) = schema.fields().iter().position(|f| f.name() == c) else {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(format!("no column {c:?}; it has {}", have.join(", ")));
            };
            wanted.push(i);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(|e| e.to_string())?;
    Ok(reader.flat_map(|batch| {
        let rows = batch.map_err(|e| e.to_string()).and_then(|batch| {
            let mut writer = arrow_json::ArrayWriter::new(Vec::new());
            writer.write(&batch).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
            serde_json::from_slice::<Vec<serde_json::Value>>(&writer.into_inner())
                .map_err(|e| e.to_string())
        });
        let out: Vec<Result<serde_json::Value, String>> = match rows {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        out
    }))
}
