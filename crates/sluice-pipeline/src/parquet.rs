//! Parquet parts for [`PartSink`](crate::sink::PartSink): JSON records become one Arrow record
//! batch per part through `arrow-json` (schema inferred from the part's records, so each part is
//! self-describing) and are written by `parquet`'s `ArrowWriter` with Snappy compression.

use std::collections::HashSet;
use std::fs::File;
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

/// Writes `records` (JSON objects) as one Parquet file to `out`.
pub(crate) fn encode(records: &[serde_json::Value], out: &mut Vec<u8>) -> Result<(), SinkError> {
    let schema = arrow_json::reader::infer_json_schema_from_iterator(records.iter().map(Ok))
        .map_err(encode_error)?;
    let schema = Arc::new(schema);
    // Coercion lets a field seen as both numbers and strings land in its inferred Utf8 column.
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(records.len().max(1))
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(encode_error)?;
    decoder.serialize(records).map_err(encode_error)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(out, schema, Some(props)).map_err(encode_error)?;
    while let Some(batch) = decoder.flush().map_err(encode_error)? {
        writer.write(&batch).map_err(encode_error)?;
    }
    writer.close().map_err(encode_error)?;
    Ok(())
}

/// Adds the `key_field` column of the Parquet file at `path` to `done`, as text: strings as they
/// are, numbers in their decimal form (as [`key_text`](crate::keys::key_text) renders JSON keys).
pub(crate) fn read_keys(
    path: &Path,
    key_field: &str,
    done: &mut HashSet<String>,
) -> Result<(), SinkError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        SinkError::Encode(format!(
            "{}: not a readable Parquet part: {e}",
            path.display()
        ))
    };
    let file = File::open(path).map_err(|e| SinkError::io(path, e))?;
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
