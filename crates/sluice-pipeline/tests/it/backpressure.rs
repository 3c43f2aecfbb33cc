//! Streaming mode holds a bounded number of items: behind a stalled stage, the source stops after
//! exactly as many items as the channels and the workers' batches can hold.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{fixed, Probe};
use sluice_pipeline::{Mode, Pipeline, RunOptions, VecSink};

#[test]
fn source_emits_exactly_what_the_channels_hold_behind_a_stalled_stage() {
    let pulled = Arc::new(AtomicU64::new(0));
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let counter = pulled.clone();
    let source = (0..1000u64).inspect(move |_| {
        counter.fetch_add(1, SeqCst);
    });
    let fast = Probe::new("fast", fixed(4, 1), Ok);
    let wait = gate.clone();
    let stalled = Probe::new("stalled", fixed(3, 1), move |x| {
        let (open, cv) = &*wait;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(x)
    });
    let run = std::thread::spawn(move || {
        let mut sink = VecSink::default();
        let summary = Pipeline::from_items(source)
            .stage(fast)
            .stage(stalled)
            .run(&RunOptions::default().mode(Mode::Streaming), &mut sink)
            .unwrap();
        (summary, sink.0.len())
    });

    // The stalled worker holds its batch of 3; its input channel holds 3 (batch 3 x 1 worker);
    // the fast worker pulled two batches of 4 and could pass on 6 of those 8, so it holds 2; its
    // input channel holds 4 (batch 4 x 1 worker); the source holds 1 it cannot send.
    let expected = 3 + 3 + 2 + 4 + 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while pulled.load(SeqCst) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pulled.load(SeqCst), expected);

    let (open, cv) = &*gate;
    *open.lock().unwrap() = true;
    cv.notify_all();
    let (summary, written) = run.join().unwrap();
    assert_eq!(
        (summary.items_out, written as u64, summary.failed),
        (1000, 1000, 0)
    );
}
