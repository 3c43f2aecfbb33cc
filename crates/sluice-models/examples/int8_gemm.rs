//! Times the int8 product on M2M100 418M's shapes for every kernel this CPU has, next to
//! candle's float32 matmul: `cargo run --release -p sluice-models --example int8_gemm`.
//!
//! Rows (1, 5, 16, 80) are decoding batches: greedy and 5 beams at batch 1 and 16.

use std::time::Instant;

use candle_core::{Device, Tensor};
use sluice_models::int8::{Isa, QMatrix};

fn main() {
    let shapes = [(1024, 1024), (4096, 1024), (1024, 4096), (128_112, 1024)];
    let rows = [1usize, 5, 16, 80];
    println!("threads: {}", rayon::current_num_threads());
    println!("| n x k | rows | kernel | ms | GMAC/s | weight GB/s |");
    println!("| --- | ---: | --- | ---: | ---: | ---: |");
    for (n, k) in shapes {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let qs: Vec<(Isa, QMatrix)> = Isa::supported_all()
            .into_iter()
            .map(|isa| (isa, QMatrix::quantize(&w, n, k, isa)))
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        for m in rows {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut out = vec![0f32; m * n];
            let reps = (2_000_000_000 / (m * n * k).max(1)).clamp(3, 200);
            let report = |name: &str, secs: f64| {
                let per = secs / reps as f64;
                println!(
                    "| {n} x {k} | {m} | {name} | {:.3} | {:.1} | {:.1} |",
                    per * 1e3,
                    (m * n * k) as f64 / per / 1e9,
                    (n * k) as f64 / per / 1e9
                );
            };
            for (isa, q) in &qs {
                q.matmul(&x, m, None, &mut out);
                let t = Instant::now();
                for _ in 0..reps {
                    q.matmul(&x, m, None, &mut out);
                }
                report(isa.name(), t.elapsed().as_secs_f64());
            }
            let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
            let f = |xt: &Tensor| {
                if m <= 8 {
                    wt.matmul(&xt.t().unwrap().contiguous().unwrap()).unwrap()
                } else {
                    xt.matmul(&wt.t().unwrap()).unwrap()
                }
            };
            f(&xt);
            let t = Instant::now();
            for _ in 0..reps {
                f(&xt);
            }
            report("candle f32", t.elapsed().as_secs_f64());
        }
    }
}
