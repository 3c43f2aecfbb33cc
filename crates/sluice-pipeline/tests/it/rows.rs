//! Row files: a stage that writes an item's many rows to disk as it makes them gets the same
//! table as one that holds them in the record, in every mode, with each key's rows in one part
//! and no file left behind.
#![cfg(feature = "parquet")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};
use sluice_pipeline::rows::RowsWriter;
use sluice_pipeline::stages::Record;
use sluice_pipeline::{
    ItemError, Mode, PartFormat, PartSink, Pipeline, RunOptions, Stage, StageError, StageOptions,
    WorkerContext,
};

/// Item `n` has `rows(n)` rows; item 3 has more than a Parquet chunk and a part's item count.
fn rows_of(n: u64) -> u64 {
    if n == 3 {
        20_000
    } else {
        n * 7
    }
}

fn row(n: u64, i: u64) -> Value {
    json!({"i": i, "score": (i as f32) / 3.0, "label": if i % 2 == 0 { "even" } else { "odd" }})
        .as_object()
        .map(|m| {
            let mut m = m.clone();
            m.insert("third".into(), json!(n as f64 / 3.0));
            Value::Object(m)
        })
        .unwrap()
}

/// Makes each item's rows, in a row file past `hold` rows, in the record otherwise.
#[derive(Clone)]
struct Windows {
    hold: u64,
    scratch: Option<PathBuf>,
}

impl Stage for Windows {
    type In = u64;
    type Out = Record;

    fn name(&self) -> String {
        "windows".into()
    }

    fn options(&self) -> StageOptions {
        StageOptions::default().batch_size(2)
    }

    fn setup(&mut self, worker: &WorkerContext) -> Result<(), StageError> {
        self.scratch = Some(worker.scratch.clone());
        Ok(())
    }

    fn process(&mut self, batch: &[u64]) -> Result<Vec<Result<Record, ItemError>>, StageError> {
        let scratch = self.scratch.as_deref().expect("set up");
        Ok(batch
            .iter()
            .map(|&n| {
                let windows = if rows_of(n) > self.hold {
                    let mut w = RowsWriter::create(scratch).unwrap();
                    (0..rows_of(n)).for_each(|i| w.push(&row(n, i)).unwrap());
                    w.finish().unwrap()
                } else {
                    Value::Array((0..rows_of(n)).map(|i| row(n, i)).collect())
                };
                Ok(json!({"n": n, "name": format!("item {n}"), "windows": windows}))
            })
            .collect())
    }
}

/// Every row of the parts in `dir` by key, and the keys of each part.
fn table(dir: &Path, format: PartFormat) -> (BTreeMap<String, Vec<Value>>, Vec<Vec<String>>) {
    let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut parts = Vec::new();
    for path in PartSink::part_files(dir, format).unwrap() {
        let records: Vec<Value> = match format {
            PartFormat::Jsonl => std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            PartFormat::Parquet => {
                let file = std::fs::File::open(&path).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                let mut records = Vec::new();
                for batch in reader {
                    let mut w = arrow_json::ArrayWriter::new(Vec::new());
                    w.write(&batch.unwrap()).unwrap();
                    w.finish().unwrap();
                    records.extend(serde_json::from_slice::<Vec<Value>>(&w.into_inner()).unwrap());
                }
                records
            }
        };
        let mut keys: Vec<String> = records.iter().map(|r| r["id"].to_string()).collect();
        keys.dedup();
        parts.push(keys);
        for r in records {
            by_key.entry(r["id"].to_string()).or_default().push(r);
        }
    }
    (by_key, parts)
}

fn run(
    hold: u64,
    mode: Mode,
    format: PartFormat,
    explode: bool,
) -> (BTreeMap<String, Vec<Value>>, Vec<Vec<String>>) {
    let dir = tempfile::tempdir().unwrap();
    let spill = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut sink = PartSink::new(format, &out, "id", 100, "").unwrap();
    if explode {
        sink = sink.explode("windows");
    }
    let options = RunOptions {
        spill_dir: Some(spill.path().to_path_buf()),
        memory_budget: 1024,
        ..RunOptions::default().mode(mode)
    };
    let summary = Pipeline::from_items(0..6u64)
        .stage(Windows {
            hold,
            scratch: None,
        })
        .run(&options, &mut sink)
        .unwrap();
    assert_eq!(summary.items_out, 6);
    let left: Vec<_> = std::fs::read_dir(spill.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the run's scratch directory is left: {left:?}"
    );
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "staged parts left: {hidden:?}");
    table(&out, format)
}

#[test]
fn rows_from_files_make_the_table_rows_in_records_make() {
    for format in [PartFormat::Parquet, PartFormat::Jsonl] {
        let (held, _) = run(u64::MAX, Mode::Streaming, format, true);
        assert_eq!(held.len(), 5, "item 0 has no rows, so no row");
        assert_eq!(held["\"3\""].len(), 20_000);
        for mode in [Mode::Streaming, Mode::Batch, Mode::Debug] {
            // Items with more than 10 rows (2 to 5) write them to files.
            let (written, parts) = run(10, mode, format, true);
            assert_eq!(written, held, "{format:?} {mode:?}");
            for key in written.keys() {
                let holding = parts.iter().filter(|p| p.contains(key)).count();
                assert_eq!(
                    holding, 1,
                    "{key}'s rows are in {holding} parts ({format:?} {mode:?})"
                );
            }
        }
    }
}

#[test]
fn a_sink_that_writes_records_whole_reads_row_files_back_into_them() {
    let (held, _) = run(u64::MAX, Mode::Streaming, PartFormat::Jsonl, false);
    let (written, _) = run(10, Mode::Streaming, PartFormat::Jsonl, false);
    assert_eq!(written, held);
    assert_eq!(
        written["\"3\""][0]["windows"].as_array().unwrap().len(),
        20_000
    );
}
