//! Parquet parts: every record comes back from the files with its values and key, parts are
//! whole files only, and a rerun (API or TOML pipeline) skips the keys already written.
#![cfg(feature = "parquet")]

use std::collections::BTreeMap;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};
use sluice_pipeline::config::PipelineConfig;
use sluice_pipeline::{map, ItemError, PartFormat, PartSink, Pipeline, RunOptions, StageOptions};

/// Every row of every Parquet part in `dir`, as JSON objects, by key.
fn rows(dir: &Path, key: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for path in PartSink::part_files(dir, PartFormat::Parquet).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let mut writer = arrow_json::ArrayWriter::new(Vec::new());
            writer.write(&batch).unwrap();
            writer.finish().unwrap();
            let records: Vec<Value> = serde_json::from_slice(&writer.into_inner()).unwrap();
            for record in records {
                let k = record[key].as_str().unwrap().to_string();
                assert!(out.insert(k, record).is_none(), "a key written twice");
            }
        }
    }
    out
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".parquet"))
        .collect()
}

#[test]
fn parquet_parts_hold_every_record_and_reruns_skip_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let describe = map(
        "describe",
        StageOptions::default().batch_size(8),
        |n: &u64| {
            if n % 10 == 3 {
                return Err(ItemError::permanent("ends in 3"));
            }
            Ok::<_, ItemError>(json!({
                "n": n,
                "half": *n as f64 / 2.0,
                "name": format!("item {n}"),
                "tags": ["a", n.to_string()],
                "inner": {"even": n % 2 == 0},
            }))
        },
    );
    let options = RunOptions {
        skip_completed: true,
        ..RunOptions::default()
    };
    let mut sink = PartSink::new(PartFormat::Parquet, &out, "key", 25, "").unwrap();
    let summary = Pipeline::from_items(0..100u64)
        .stage(describe.clone())
        .run(&options, &mut sink)
        .unwrap();
    assert_eq!((summary.items_out, summary.failed), (90, 10));
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert_eq!(
        PartSink::part_files(&out, PartFormat::Parquet)
            .unwrap()
            .len(),
        4
    );

    let written = rows(&out, "key");
    assert_eq!(written.len(), 90);
    for n in (0..100u64).filter(|n| n % 10 != 3) {
        assert_eq!(
            written[&n.to_string()],
            json!({
                "n": n,
                "half": n as f64 / 2.0,
                "name": format!("item {n}"),
                "tags": ["a", n.to_string()],
                "inner": {"even": n % 2 == 0},
                "key": n.to_string(),
            })
        );
    }

    // The rerun reads the keys back from the Parquet files: only the ten failures are retried.
    let mut sink = PartSink::new(PartFormat::Parquet, &out, "key", 25, "").unwrap();
    let summary = Pipeline::from_items(0..100u64)
        .stage(describe)
        .run(&options, &mut sink)
        .unwrap();
    assert_eq!(
        (summary.skipped, summary.items_in, summary.failed),
        (90, 10, 10)
    );
    assert_eq!(rows(&out, "key").len(), 90);
}

#[test]
fn a_toml_pipeline_writes_parquet_with_numeric_keys() {
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..30)
        .map(|n| format!("{{\"id\": {n}, \"text\": \"line {n}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let toml = format!(
        "[source]\nkind = \"jsonl\"\npath = \"{}\"\nkey = \"id\"\n\n\
         [sink]\nkind = \"parquet\"\npath = \"{}\"\npart_items = 7\n",
        dir.path().join("in.jsonl").display(),
        dir.path().join("out").display()
    );
    let file = dir.path().join("p.toml");
    let run = || {
        let mut config = PipelineConfig::parse(&file, &toml, &[]).unwrap();
        config.options.progress = sluice_pipeline::Progress::Off;
        config.run().unwrap()
    };
    let first = run();
    assert_eq!((first.items_out, first.skipped), (30, 0));
    // Integer keys are stored as an integer column and still recognised on the rerun.
    let second = run();
    assert_eq!((second.items_in, second.skipped), (0, 30));

    let mut ids = Vec::new();
    for path in PartSink::part_files(&dir.path().join("out"), PartFormat::Parquet).unwrap() {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(
            builder.schema().field_with_name("id").unwrap().data_type(),
            &arrow_schema::DataType::Int64
        );
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let column = batch.column_by_name("id").unwrap();
            let column = column
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            ids.extend(column.values().iter().copied());
        }
    }
    ids.sort();
    assert_eq!(ids, (0..30).collect::<Vec<i64>>());
}

#[test]
fn a_parquet_source_reads_a_tables_parts_by_column_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..30)
        .map(|n| {
            format!("{{\"id\": \"k{n}\", \"text\": \"line {n}\", \"n\": {n}, \"extra\": [1]}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let run = |toml: String| {
        let file = dir.path().join("p.toml");
        let mut config = PipelineConfig::parse(&file, &toml, &[]).unwrap();
        config.options.progress = sluice_pipeline::Progress::Off;
        config.run()
    };
    let table = dir.path().join("table");
    run(format!(
        "[source]\nkind = \"jsonl\"\npath = \"{}\"\nkey = \"id\"\n\n\
         [sink]\nkind = \"parquet\"\npath = \"{}\"\npart_items = 7\n",
        dir.path().join("in.jsonl").display(),
        table.display()
    ))
    .unwrap();
    assert_eq!(
        PartSink::part_files(&table, PartFormat::Parquet)
            .unwrap()
            .len(),
        5
    );

    // The table's parts as a source: two columns, four rows at a time, keyed by id.
    let copy = dir.path().join("copy");
    let summary = run(format!(
        "[source]\nkind = \"parquet\"\npath = \"{}\"\ncolumns = [\"id\", \"n\"]\nkey = \"id\"\nbatch_rows = 4\n\n\
         [sink]\nkind = \"parquet\"\npath = \"{}\"\nkey_field = \"id\"\n",
        table.display(),
        copy.display()
    ))
    .unwrap();
    assert_eq!((summary.items_out, summary.failed), (30, 0));
    let got = rows(&copy, "id");
    assert_eq!(got.len(), 30);
    for n in 0..30 {
        assert_eq!(
            got[&format!("k{n}")],
            json!({"id": format!("k{n}"), "n": n})
        );
    }

    // A column the files lack is refused with the columns they have.
    let err = run(format!(
        "[source]\nkind = \"parquet\"\npath = \"{}\"\ncolumns = [\"nope\"]\n\n\
         [sink]\nkind = \"jsonl\"\npath = \"{}\"\n",
        table.display(),
        dir.path().join("x").display()
    ));
    let failures = match err {
        Ok(summary) => summary.failures,
        Err(e) => panic!("{e}"),
    };
    assert!(
        failures
            .iter()
            .any(|f| f.error.contains("no column \"nope\"") && f.error.contains("text")),
        "{failures:?}"
    );
}
