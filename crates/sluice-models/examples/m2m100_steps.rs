//! Times the phases of one generation (encoder, decoder steps, head) on a model directory:
//! `cargo run --release -p sluice-models --example m2m100_steps -- DIR [ROWS] [BEAMS] [int8|float32]`.

use std::time::Instant;

use candle_core::Device;
use sluice_models::m2m100::{ComputeType, M2M100};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let rows: usize = args.get(2).map_or(16, |s| s.parse().unwrap());
    let beams: usize = args.get(3).map_or(1, |s| s.parse().unwrap());
    let compute: ComputeType = args
        .get(4)
        .map_or(ComputeType::Int8, |s| s.parse().unwrap());
    let t = Instant::now();
    let m = M2M100::load(&dir, &Device::Cpu, compute).unwrap();
    println!("load {:.2}s", t.elapsed().as_secs_f64());
    let batch: Vec<Vec<u32>> = (0..rows)
        .map(|r| {
            (0..20)
                .map(|j| 100 + ((r * 31 + j * 7) % 5000) as u32)
                .chain([2])
                .collect()
        })
        .collect();
    let model = m.model();
    for _ in 0..2 {
        let t = Instant::now();
        let enc = model.encode(&batch).unwrap();
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut state = model.start_decoding(&enc, beams).unwrap();
        let ts = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let toks = vec![2u32; rows * beams];
        for _ in 0..32 {
            model.decode_step(&toks, &mut state).unwrap();
        }
        let td = t.elapsed().as_secs_f64();
        println!(
            "encode {:.3}s  start {:.3}s  32 steps {:.3}s ({:.1} ms/step)",
            te,
            ts,
            td,
            td / 32.0 * 1e3
        );
    }
}
