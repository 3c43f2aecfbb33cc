//! Batch and debug modes give the same outputs and failures as streaming, and `preserve_order`
//! delivers outputs in input order.

use crate::common;

use common::Probe;
use sluice_pipeline::{ItemError, Mode, Pipeline, RunOptions, StageOptions, VecSink};

fn pipeline() -> Pipeline<u64> {
    let options = StageOptions::default().batch_size(7);
    let square = Probe::new("square", options.clone(), |x| Ok(x * x));
    let picky = Probe::new("picky", options.clone().batch_size(5), |x| {
        if x % 9 == 0 {
            Err(ItemError::permanent("divisible by 9"))
        } else {
            Ok(x + 1)
        }
    });
    let half = Probe::new("half", options.batch_size(3), |x| Ok(x / 2));
    Pipeline::from_items(0..2000u64)
        .stage(square)
        .stage(picky)
        .stage(half)
}

fn outputs(options: &RunOptions) -> (Vec<(String, u64)>, Vec<String>, sluice_pipeline::RunSummary) {
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        failures_path: Some(dir.path().join("failures.jsonl")),
        ..options.clone()
    };
    let mut sink = VecSink::default();
    let summary = pipeline().run(&options, &mut sink).unwrap();
    let out: Vec<_> = sink
        .0
        .into_iter()
        .map(|e| (e.key.to_string(), e.value))
        .collect();
    // The summary keeps only the first failures; the file has all of them.
    let all = std::fs::read_to_string(dir.path().join("failures.jsonl")).unwrap();
    let mut failed: Vec<_> = all
        .lines()
        .map(|l| serde_json::from_str::<sluice_pipeline::Failure>(l).unwrap())
        .map(|f| format!("{}:{}", f.stage, f.key))
        .collect();
    failed.sort();
    (out, failed, summary)
}

fn sorted(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
    v.sort();
    v
}

#[test]
fn batch_and_debug_modes_give_the_same_outputs_as_streaming() {
    let (streaming, streaming_failed, s) = outputs(&RunOptions {
        cpus: Some(4.0),
        ..RunOptions::default().mode(Mode::Streaming)
    });
    // x² is divisible by 9 exactly when x is divisible by 3.
    assert_eq!((s.items_out, s.failed), (1333, 667));
    // A budget of a few kilobytes makes every stage boundary spill to disk.
    let batch_options = RunOptions {
        memory_budget: 4096,
        ..RunOptions::default().mode(Mode::Batch)
    };
    let (batch, batch_failed, b) = outputs(&batch_options);
    assert!(b.spilled_chunks > 10, "{} chunks", b.spilled_chunks);
    let (debug, debug_failed, _) = outputs(&RunOptions::default().mode(Mode::Debug));
    assert_eq!(sorted(batch), sorted(streaming.clone()));
    assert_eq!(
        debug,
        sorted_by_seq(&streaming),
        "debug mode runs in input order"
    );
    assert_eq!(batch_failed, streaming_failed);
    assert_eq!(debug_failed, streaming_failed);
}

fn sorted_by_seq(v: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut v = v.to_vec();
    v.sort_by_key(|(k, _)| k.parse::<u64>().unwrap());
    v
}

#[test]
fn preserve_order_delivers_outputs_in_input_order_around_failures() {
    for mode in [Mode::Streaming, Mode::Batch] {
        let options = RunOptions {
            preserve_order: true,
            cpus: Some(4.0),
            memory_budget: 8192,
            ..RunOptions::default().mode(mode)
        };
        let (out, _, summary) = outputs(&options);
        assert_eq!(out.len() as u64, summary.items_out);
        assert_eq!(out, sorted_by_seq(&out), "{mode} mode");
    }
}
