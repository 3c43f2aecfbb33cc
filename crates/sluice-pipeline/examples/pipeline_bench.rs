//! Sluice side of the pipeline benchmark against Ray Data (`bench/ray_pipeline_bench.py` is the
//! other side; `bench/pipeline_bench.sh` runs both). The workloads mirror the Python ones exactly:
//!
//! * `noop3`: item ids `0..N` through three identity stages in batches of 1024, so the time is the
//!   engine's per-item and per-batch overhead;
//! * `cpu2`: `a = sha256(id as 8 LE bytes ++ BUF[..256 KiB])`, `b = sha256(a ++ BUF[..768 KiB])`
//!   in batches of 16, stage b costing three times stage a so balancing has something to do.
//!   The checksum (XOR of the first 8 bytes, little endian, of every `b`) and the digests of ids
//!   0 and 1 must equal Ray's.
//!
//! Prints one JSON line; the timed region is `Pipeline::run` (building the pipeline is free).
//!
//! ```text
//! cargo run --release -p sluice-pipeline --example pipeline_bench -- \
//!     --workload cpu2 --items 2000 [--batch-size 16] [--cpus 2] [--mode streaming] [--repeat 3]
//! ```

use std::time::Instant;

use sha2::{Digest, Sha256};
use sluice_pipeline::{
    map, Envelope, ItemError, Mode, Pipeline, RunOptions, RunSummary, Sink, SinkError, StageOptions,
};

const HASH_A_LEN: usize = 256 * 1024;
const HASH_B_LEN: usize = 768 * 1024;

struct Args {
    workload: String,
    items: u64,
    batch_size: Option<usize>,
    cpus: Option<f64>,
    mode: Mode,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workload: String::new(),
        items: 0,
        batch_size: None,
        cpus: None,
        mode: Mode::Streaming,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--workload" => args.workload = value,
            "--items" => args.items = value.parse().map_err(|e| bad(&e))?,
            "--batch-size" => args.batch_size = Some(value.parse().map_err(|e| bad(&e))?),
            "--cpus" => args.cpus = Some(value.parse().map_err(|e| bad(&e))?),
            "--mode" => args.mode = value.parse().map_err(|e| bad(&e))?,
            "--repeat" => args.repeat = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !matches!(args.workload.as_str(), "noop3" | "cpu2") || args.items == 0 || args.repeat == 0 {
        return Err(
            "usage: --workload noop3|cpu2 --items N [--batch-size B] [--cpus C] \
                    [--mode streaming|batch|debug] [--repeat R]"
                .into(),
        );
    }
    Ok(args)
}

/// Counts outputs and folds cpu2's checksum, holding nothing: like Ray's driver consuming blocks.
#[derive(Default)]
struct Fold {
    count: u64,
    checksum: u64,
    first: [Option<[u8; 32]>; 2],
}

impl Sink<u64> for Fold {
    fn write(&mut self, _item: Envelope<u64>) -> Result<(), SinkError> {
        self.count += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl Sink<(u64, [u8; 32])> for Fold {
    fn write(&mut self, item: Envelope<(u64, [u8; 32])>) -> Result<(), SinkError> {
        let (id, b) = item.value;
        self.count += 1;
        self.checksum ^= u64::from_le_bytes(b[..8].try_into().expect("32-byte digest"));
        if id < 2 {
            self.first[id as usize] = Some(b);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn run_once(args: &Args, buf: &'static [u8]) -> (RunSummary, Fold) {
    let options = RunOptions {
        cpus: args.cpus,
        ..RunOptions::default()
    }
    .mode(args.mode);
    let mut fold = Fold::default();
    let summary = match args.workload.as_str() {
        "noop3" => {
            let opts = StageOptions::default().batch_size(args.batch_size.unwrap_or(1024));
            let identity = |name| map(name, opts.clone(), |x: &u64| Ok::<_, ItemError>(*x));
            Pipeline::from_items(0..args.items)
                .stage(identity("noop1"))
                .stage(identity("noop2"))
                .stage(identity("noop3"))
                .run(&options, &mut fold)
        }
        _ => {
            let opts = StageOptions::default().batch_size(args.batch_size.unwrap_or(16));
            let hash_a = map("hash_a", opts.clone(), move |id: &u64| {
                let digest: [u8; 32] = Sha256::new()
                    .chain_update(id.to_le_bytes())
                    .chain_update(&buf[..HASH_A_LEN])
                    .finalize()
                    .into();
                Ok::<_, ItemError>((*id, digest))
            });
            let hash_b = map("hash_b", opts, move |(id, a): &(u64, [u8; 32])| {
                let digest: [u8; 32] = Sha256::new()
                    .chain_update(a)
                    .chain_update(&buf[..HASH_B_LEN])
                    .finalize()
                    .into();
                Ok::<_, ItemError>((*id, digest))
            });
            Pipeline::from_items(0..args.items)
                .stage(hash_a)
                .stage(hash_b)
                .run(&options, &mut fold)
        }
    }
    .unwrap_or_else(|e| panic!("benchmark run failed: {e}"));
    assert_eq!(fold.count, args.items, "every item must come out");
    (summary, fold)
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let buf: &'static [u8] = (0..1usize << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .leak();
    let mut runs = Vec::new();
    let mut last = None;
    for _ in 0..args.repeat {
        let started = Instant::now();
        let result = run_once(&args, buf);
        runs.push(started.elapsed().as_secs_f64());
        last = Some(result);
    }
    let (summary, fold) = last.expect("at least one repeat");
    let best = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let round = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
    let mut result = serde_json::json!({
        "engine": format!("sluice {}", env!("CARGO_PKG_VERSION")),
        "workload": args.workload,
        "mode": args.mode.to_string(),
        "items": args.items,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
        "runs_seconds": runs.iter().map(|&r| round(r, 4)).collect::<Vec<_>>(),
        "best_seconds": round(best, 4),
        "items_per_s": round(args.items as f64 / best, 1),
        "peak_rss_mib": peak_rss_mib().map(|m| round(m, 1)),
        "workers": summary.stages.iter()
            .map(|s| (s.name.clone(), serde_json::json!({"end": s.workers, "peak": s.peak_workers})))
            .collect::<serde_json::Map<_, _>>(),
    });
    if args.workload == "cpu2" {
        result["checksum"] = format!("{:016x}", fold.checksum).into();
        for (i, digest) in fold.first.iter().enumerate() {
            result[format!("b{i}")] = digest.map(|d| hex(&d)).into();
        }
    }
    println!("{result}");
}
