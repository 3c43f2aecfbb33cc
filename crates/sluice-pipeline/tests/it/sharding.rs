//! `--shard i/n` runs split the input so that every item is processed by exactly one shard.

use crate::common;

use std::collections::HashMap;

use common::Probe;
use sluice_pipeline::{Mode, Pipeline, RunOptions, Shard, StageOptions, VecSink};

#[test]
fn shard_runs_cover_every_item_exactly_once() {
    let mut seen = HashMap::<String, usize>::new();
    let count = 5;
    for index in 0..count {
        let stage = Probe::new("id", StageOptions::default(), Ok);
        let options = RunOptions {
            shard: Shard { index, count },
            ..RunOptions::default().mode(Mode::Streaming)
        };
        let mut sink = VecSink::default();
        let keyed = (0..5000u64).map(|i| (format!("item-{i}"), i));
        let summary = Pipeline::from_keyed(keyed)
            .stage(stage)
            .run(&options, &mut sink)
            .unwrap();
        assert_eq!(summary.items_read, 5000);
        assert_eq!(summary.items_in + summary.other_shards, 5000);
        assert!(
            summary.items_in > 800 && summary.items_in < 1200,
            "shard {index} got {}",
            summary.items_in
        );
        for item in sink.0 {
            *seen.entry(item.key.to_string()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 5000);
    assert!(seen.values().all(|&n| n == 1));
}
