//! A failing item is reported and the rest complete; transient errors are retried; a panicking
//! worker is replaced, a stage that keeps breaking stops the run with the reason, and one that
//! fails in a way no worker can avoid stops it at once.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fixed, Probe};
use sluice_pipeline::{
    Failure, ItemError, Mode, Pipeline, RunError, RunOptions, Stage, StageError, StageOptions,
    VecSink, WorkerContext,
};

fn run_opts(dir: &std::path::Path) -> RunOptions {
    RunOptions {
        failures_path: Some(dir.join("failures.jsonl")),
        ..RunOptions::default().mode(Mode::Streaming)
    }
}

fn read_failures(dir: &std::path::Path) -> Vec<Failure> {
    std::fs::read_to_string(dir.join("failures.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn failed_items_go_to_the_failures_file_and_the_rest_complete() {
    let dir = tempfile::tempdir().unwrap();
    let check = Probe::new("check", fixed(8, 2), |x| {
        if x % 10 == 3 {
            Err(ItemError::permanent(format!("{x} is not allowed")))
        } else {
            Ok(x)
        }
    });
    let mut sink = VecSink::default();
    let summary = Pipeline::from_items(0..1000u64)
        .stage(check)
        .run(&run_opts(dir.path()), &mut sink)
        .unwrap();
    assert_eq!((summary.items_out, summary.failed), (900, 100));
    let mut failures = read_failures(dir.path());
    failures.sort_by_key(|f| f.key.parse::<u64>().unwrap());
    assert_eq!(failures.len(), 100);
    assert_eq!(
        failures[0],
        Failure {
            stage: "check".into(),
            key: "3".into(),
            error: "3 is not allowed".into(),
            attempts: 1,
            seq: 0
        }
    );
    let mut out: Vec<u64> = sink.0.iter().map(|e| e.value).collect();
    out.sort();
    assert_eq!(out, (0..1000).filter(|x| x % 10 != 3).collect::<Vec<_>>());
}

#[test]
fn transient_errors_are_retried_until_they_succeed_or_run_out_of_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let seen = attempts.clone();
    let mut options = fixed(4, 1).retries(2, Duration::from_millis(1));
    options.max_restarts = 0;
    let flaky = Probe::new("flaky", options, move |x| {
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(x).or_default();
        *n += 1;
        // Items below 10 succeed on the third attempt; item 99 never does.
        match (x, *n) {
            (99, _) => Err(ItemError::transient("still busy")),
            (0..10, 1 | 2) => Err(ItemError::transient("busy, try again")),
            _ => Ok(x),
        }
    });
    let mut sink = VecSink::default();
    let summary = Pipeline::from_items(0..100u64)
        .stage(flaky)
        .run(&run_opts(dir.path()), &mut sink)
        .unwrap();
    assert_eq!((summary.items_out, summary.failed), (99, 1));
    assert_eq!(summary.stages[0].retries, 10 * 2 + 2);
    let failures = read_failures(dir.path());
    assert_eq!((failures[0].key.as_str(), failures[0].attempts), ("99", 3));
    assert_eq!(attempts.lock().unwrap()[&5], 3);
}

#[test]
fn a_panicking_worker_is_restarted_and_only_its_batch_fails() {
    let dir = tempfile::tempdir().unwrap();
    let crashing = Probe::new("crashing", fixed(1, 1), |x| {
        if x == 500 {
            panic!("corrupt item {x}");
        }
        Ok(x)
    });
    let setups = crashing.setups.clone();
    let mut sink = VecSink::default();
    let summary = Pipeline::from_items(0..1000u64)
        .stage(crashing)
        .run(&run_opts(dir.path()), &mut sink)
        .unwrap();
    assert_eq!(
        (
            summary.items_out,
            summary.failed,
            summary.stages[0].restarts
        ),
        (999, 1, 1)
    );
    assert_eq!(
        setups.load(SeqCst),
        2,
        "a fresh instance is set up after the panic"
    );
    let failures = read_failures(dir.path());
    assert_eq!(failures[0].key, "500");
    assert_eq!(failures[0].error, "worker panicked: corrupt item 500");
}

#[test]
fn a_stage_that_keeps_panicking_aborts_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Probe::new("broken", fixed(2, 1).max_restarts(3), |_| {
        panic!("model weights are garbage")
    });
    let err = Pipeline::from_items(0..1000u64)
        .stage(broken)
        .run(&run_opts(dir.path()), &mut VecSink::default())
        .unwrap_err();
    let RunError::Aborted { reason, summary } = err else {
        panic!("expected an aborted run, got {err}")
    };
    assert!(
        reason.contains("stage broken: 4 workers broke, more than its limit of 3"),
        "{reason}"
    );
    assert!(reason.contains("model weights are garbage"), "{reason}");
    assert_eq!(summary.status, "aborted");
    assert_eq!(
        summary.stages[0].failed, 8,
        "four batches of two failed before the limit"
    );
    assert_eq!(
        read_failures(dir.path()).len(),
        8,
        "the failures file is written even when aborted"
    );
}

/// A stage whose setup fails with `error`, counting its attempts.
#[derive(Clone)]
struct FailsSetup {
    error: StageError,
    setups: Arc<AtomicUsize>,
}

impl Stage for FailsSetup {
    type In = u64;
    type Out = u64;

    fn name(&self) -> String {
        "load".into()
    }

    fn options(&self) -> StageOptions {
        fixed(4, 2).max_restarts(5)
    }

    fn setup(&mut self, _: &WorkerContext) -> Result<(), StageError> {
        self.setups.fetch_add(1, SeqCst);
        Err(self.error.clone())
    }

    fn process(&mut self, batch: &[u64]) -> Result<Vec<Result<u64, ItemError>>, StageError> {
        Ok(batch.iter().map(|&x| Ok(x)).collect())
    }
}

fn run_failing_setup(error: StageError) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let setups = Arc::new(AtomicUsize::new(0));
    let stage = FailsSetup {
        error,
        setups: setups.clone(),
    };
    let err = Pipeline::from_items(0..100u64)
        .stage(stage)
        .run(&run_opts(dir.path()), &mut VecSink::default())
        .unwrap_err();
    let RunError::Aborted { reason, .. } = err else {
        panic!("expected an aborted run, got {err}")
    };
    (reason, setups.load(SeqCst))
}

#[test]
fn a_fatal_setup_failure_stops_the_run_at_once_and_a_broken_one_is_retried() {
    let (reason, setups) = run_failing_setup(StageError::fatal("no model at /models/m"));
    assert!(
        reason.contains("stage load: setup failed: no model at /models/m (not retried"),
        "{reason}"
    );
    // Both workers may have tried before the first one stopped the run, never more.
    assert!(setups <= 2, "{setups} setups of a fatal failure");

    let (reason, setups) = run_failing_setup(StageError::new("device busy"));
    assert!(
        reason.contains("stage load: 6 workers broke, more than its limit of 5"),
        "{reason}"
    );
    assert!(reason.contains("device busy"), "{reason}");
    assert!(setups >= 6, "{setups} setups of a broken worker");
}

#[test]
fn an_exec_stage_whose_program_is_missing_stops_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let stage = sluice_pipeline::stages::ExecStage::new(
        "clean",
        vec!["sluice-no-such-program".into()],
        fixed(2, 1),
    );
    let err = Pipeline::from_items((0..10).map(|i| serde_json::json!({ "i": i })))
        .stage(stage)
        .run(&run_opts(dir.path()), &mut VecSink::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stage clean: setup failed: cannot start \"sluice-no-such-program\"")
            && err.contains("not retried"),
        "{err}"
    );
}

/// Runs 10 records through an exec stage running `script` (sh) with one worker; the run's error
/// and how many times the program was started.
fn run_exec_script(script: &str, max_restarts: u32) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let mut stage = sluice_pipeline::stages::ExecStage::new(
        "py",
        vec![
            "sh".into(),
            "-c".into(),
            format!("echo x >> \"$STARTS\"; {script}"),
        ],
        fixed(2, 1).max_restarts(max_restarts),
    );
    stage
        .env
        .push(("STARTS".into(), starts.display().to_string()));
    let err = Pipeline::from_items((0..10).map(|i| serde_json::json!({ "i": i })))
        .stage(stage)
        .run(&run_opts(dir.path()), &mut VecSink::default())
        .unwrap_err()
        .to_string();
    let started = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    (err, started)
}

#[test]
fn an_exec_program_that_says_it_cannot_work_stops_the_run_and_a_crash_is_restarted() {
    // It says why on a line.
    let (err, starts) = run_exec_script(
        "echo '{\"sluice_fatal\": \"no model at /models/m\"}'; exit 1",
        5,
    );
    assert!(
        err.contains("the program says: no model at /models/m") && err.contains("not retried"),
        "{err}"
    );
    assert_eq!(starts, 1, "{err}");
    // Or exits with EX_CONFIG.
    let (err, starts) = run_exec_script("exit 78", 5);
    assert!(
        err.contains("exit status: 78") && err.contains("not retried"),
        "{err}"
    );
    assert_eq!(starts, 1, "{err}");
    // Any other exit is a broken worker: restarted up to the limit.
    let (err, starts) = run_exec_script("exit 1", 3);
    assert!(
        err.contains("4 workers broke, more than its limit of 3"),
        "{err}"
    );
    assert_eq!(starts, 4, "{err}");
}
