//! The balancer gives each auto-sized stage workers in proportion to its time per item.

use crate::common;

use std::time::Duration;

use common::Probe;
use sluice_pipeline::{Mode, Pipeline, RunOptions, StageOptions, VecSink};

#[test]
fn fast_and_slow_stages_converge_to_workers_proportional_to_their_cost() {
    // Sleeping stages cost no CPU, so the 1:3 ratio holds on a busy two-core machine; any
    // measured ratio between 2.5 and 3.5 gives the same split of eight slots: 2 and 6.
    let options = StageOptions::default().batch_size(4);
    let fast = Probe::new("fast", options.clone(), Ok).sleeping(Duration::from_millis(2));
    let slow = Probe::new("slow", options, Ok).sleeping(Duration::from_millis(6));
    let run = RunOptions {
        cpus: Some(8.0),
        balance_interval: Duration::from_millis(200),
        ..RunOptions::default().mode(Mode::Streaming)
    };
    let mut sink = VecSink::default();
    let summary = Pipeline::from_items(0..3000u64)
        .stage(fast)
        .stage(slow)
        .run(&run, &mut sink)
        .unwrap();
    let workers: Vec<_> = summary.stages.iter().map(|s| s.workers).collect();
    assert_eq!(workers, vec![2, 6], "{}", summary.render());
    assert_eq!(summary.items_out, 3000);
}

#[test]
fn fixed_worker_counts_are_not_rebalanced() {
    let fast = Probe::new("fast", common::fixed(4, 3), Ok).sleeping(Duration::from_millis(1));
    let slow = Probe::new("slow", StageOptions::default().batch_size(4), Ok)
        .sleeping(Duration::from_millis(3));
    let run = RunOptions {
        cpus: Some(8.0),
        balance_interval: Duration::from_millis(100),
        ..RunOptions::default().mode(Mode::Streaming)
    };
    let summary = Pipeline::from_items(0..1500u64)
        .stage(fast)
        .stage(slow)
        .run(&run, &mut VecSink::default())
        .unwrap();
    assert_eq!(summary.stages[0].workers, 3);
    assert_eq!(summary.stages[0].peak_workers, 3);
    // The slow stage gets what the fixed stage leaves: 8 - 3 = 5.
    assert_eq!(summary.stages[1].workers, 5, "{}", summary.render());
}
