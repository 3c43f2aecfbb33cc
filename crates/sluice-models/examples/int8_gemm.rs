//! Times the int8 product on M2M100 418M's shapes for every kernel this CPU has, next to the
//! candidates it was chosen over: rten-gemm's u8 × i8 GEMM (prepacked weights), candle's
//! quantized `QMatMul` (GGML q8_0 weights and activations) and candle's float32 matmul:
//! `cargo run --release -p sluice-models --example int8_gemm`.
//!
//! Rows (1, 5, 16, 80) are decoding batches: greedy and 5 beams at batch 1 and 16. Sluice's
//! times include quantising the activations and rescaling the outputs to float32; rten-gemm's
//! are the integer product alone (activations already `u8`), so they flatter rten-gemm.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, QuantParams};
use rten_tensor::NdTensorView;
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
        let rten = GemmExecutor::<u8, i8, i32>::default();
        let w8: Vec<i8> = w.iter().map(|v| (v * 127.0) as i8).collect();
        let packed = rten.prepack_b(NdTensorView::from_data([n, k], w8.as_slice()).transposed());
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q8 = QMatMul::from_qtensor(QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap()).unwrap();
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
            let a8: Vec<u8> = x.iter().map(|v| (v * 127.0 + 128.0) as u8).collect();
            let zero = vec![128u8; m];
            let mut acc = vec![0i32; m * n];
            let run_rten = |acc: &mut [i32]| {
                rten.gemm(
                    acc,
                    GemmInputA::Unpacked(NdTensorView::from_data([m, k], a8.as_slice())),
                    GemmInputB::Packed(&packed),
                    GemmOptions {
                        a_quant: Some(QuantParams { zero_point: &zero }),
                        ..Default::default()
                    },
                )
                .unwrap()
            };
            run_rten(&mut acc);
            let t = Instant::now();
            for _ in 0..reps {
                run_rten(&mut acc);
            }
            report(
                &format!("rten-gemm ({})", rten.kernel_name()),
                t.elapsed().as_secs_f64(),
            );
            let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
            q8.forward(&xt).unwrap();
            let t = Instant::now();
            for _ in 0..reps {
                q8.forward(&xt).unwrap();
            }
            report("candle QMatMul q8_0", t.elapsed().as_secs_f64());
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
