//! Streaming memory is bounded by the channels, not by the input: the peak resident memory of a
//! run over 100,000 items of 1 MiB is no larger than over 1,000 of them. Each size runs in a child
//! process (this test binary, re-run with an environment variable) so peaks are not shared.

use std::process::Command;

use sluice_pipeline::{map, ItemError, Mode, Pipeline, RunOptions, StageOptions, VecSink, Workers};

const CHILD: &str = "SLUICE_MEMORY_TEST_ITEMS";
const MIB: usize = 1 << 20;

/// Peak resident set of this process, from /proc.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn run_child(items: u64) {
    let options = StageOptions::default()
        .batch_size(4)
        .workers(Workers::Fixed(2));
    let copy = map("copy", options.clone(), |b: &Vec<u8>| {
        Ok::<_, ItemError>(b.clone())
    });
    let digest = map("digest", options, |b: &Vec<u8>| {
        Ok::<_, ItemError>(b.iter().step_by(4096).map(|&x| x as u64).sum::<u64>())
    });
    let source = (0..items).map(|i| vec![(i % 251) as u8; MIB]);
    let mut sink = VecSink::default();
    let summary = Pipeline::from_items(source)
        .stage(copy)
        .stage(digest)
        .run(&RunOptions::default().mode(Mode::Streaming), &mut sink)
        .unwrap();
    assert_eq!(summary.items_out, items);
    println!("PEAK_KIB={}", peak_rss_kib());
}

fn peak_for(items: u64) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "peak_memory_is_flat_from_1k_to_100k_items_of_1_mib",
            "--nocapture",
        ])
        .env(CHILD, items.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_KIB="))
        .expect("child printed its peak");
    line.trim().parse().unwrap()
}

#[test]
fn peak_memory_is_flat_from_1k_to_100k_items_of_1_mib() {
    if let Ok(items) = std::env::var(CHILD) {
        return run_child(items.parse().unwrap());
    }
    let small = peak_for(1_000);
    let large = peak_for(100_000);
    eprintln!("peak resident memory: {small} KiB for 1k items, {large} KiB for 100k items");
    // Items held between stages: 2 stages x 2 workers x batch 4 x 2 = 32 items, plus the source's
    // and the sink channel's few; 64 MiB of slack covers allocator reuse, not a growing queue
    // (100,000 items would be 100 GiB).
    assert!(
        large <= small + 64 * 1024,
        "peak {large} KiB for 100k items vs {small} KiB for 1k"
    );
    assert!(small < 200 * 1024, "peak for 1k items is {small} KiB");
}
