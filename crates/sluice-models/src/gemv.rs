//! float32 products of a few activation rows (decoding steps) with a large weight matrix,
//! parallel over output channels.
//!
//! Written here because at one to eight rows the product is a stream over the weights, and the
//! general GEMMs (candle's `gemm`) run it on one thread: batch-1 greedy decoding of M2M100 418M
//! ran at cpu/wall 1.02. This splits the channels across the thread pool.
//!
//! The same source is compiled twice, for baseline x86-64 and for AVX2; both add the products in
//! the same eight lanes and reduce them in the same order (Rust never fuses a multiply and an add
//! on its own), so both give identical bits. `SLUICE_CPU_ISA=portable` forces the baseline build
//! (the same setting that picks the int8 kernel).

use rayon::prelude::*;

use crate::int8::{selected_isa, Isa, SharedOut};

/// Most activation rows this path is used for.
pub const MAX_ROWS: usize = 8;

/// Weight rows fetched ahead of the one being multiplied.
const PREFETCH_ROWS: usize = 8;

/// Dot product in 32 running sums (lane `i` adds the products at `i mod 32`), reduced pairwise
/// in a fixed order; [`dot32_avx2`] computes exactly the same sums.
#[inline(always)]
fn dot32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    finish(acc, ra, rb)
}

/// Reduces the 32 lanes and adds the tail's products.
#[inline(always)]
fn finish(mut acc: [f32; 32], ra: &[f32], rb: &[f32]) -> f32 {
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let mut width = 16;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// [`dot32`] in four 256-bit registers (multiply, then add: the same roundings).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len()) / 32 * 32;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < n {
        for (j, v) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * j));
            let y = _mm256_loadu_ps(pb.add(i + 8 * j));
            *v = _mm256_add_ps(*v, _mm256_mul_ps(x, y));
        }
        i += 32;
    }
    let mut lanes = [0f32; 32];
    for (j, v) in acc.iter().enumerate() {
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), *v);
    }
    finish(lanes, &a[n..], &b[n..])
}

/// One block of channels: `out[i][n] = x[i] · w[n] (+ b[n])` for `n` in `n0..n1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block(
    dot: impl Fn(&[f32], &[f32]) -> f32,
    w: &[f32],
    x: &[f32],
    k: usize,
    m: usize,
    n_total: usize,
    (n0, n1): (usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    for n in n0..n1 {
        let wr = &w[n * k..(n + 1) * k];
        // The weights stream from memory once per step: ask for a later row now, which the
        // hardware prefetcher does not do far enough ahead on its own.
        #[cfg(target_arch = "x86_64")]
        if n + PREFETCH_ROWS < n1 {
            let ahead = &w[(n + PREFETCH_ROWS) * k..(n + PREFETCH_ROWS + 1) * k];
            for line in ahead.chunks(16) {
                // SAFETY: prefetching has no effect on memory contents and the address is valid.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        line.as_ptr() as *const i8,
                    )
                };
            }
        }
        for i in 0..m {
            let mut y = dot(&x[i * k..(i + 1) * k], wr);
            if let Some(b) = bias {
                y += b[n];
            }
            out[i * n_total + n] = y;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2(
    w: &[f32],
    x: &[f32],
    k: usize,
    m: usize,
    n_total: usize,
    range: (usize, usize),
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    // SAFETY: this function only runs where AVX2 is available.
    let dot = |a: &[f32], b: &[f32]| unsafe { dot32_avx2(a, b) };
    block(dot, w, x, k, m, n_total, range, bias, out)
}

/// Whether the AVX2 build runs: the int8 kernel choice (which `SLUICE_CPU_ISA` forces) has AVX2,
/// or, if that choice is refused, the CPU has it.
pub(crate) fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| match selected_isa() {
            Ok(isa) => isa >= Isa::Avx2,
            Err(_) => is_x86_feature_detected!("avx2"),
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out = x · Wᵀ (+ bias)` for `m ≤ MAX_ROWS` rows `x` (`m × k`) and `w` (`n × k`), row-major.
pub fn matmul(w: &[f32], n: usize, x: &[f32], m: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    matmul_with(use_avx2(), w, n, x, m, bias, out)
}

fn matmul_with(
    avx2: bool,
    w: &[f32],
    n: usize,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = w.len() / n.max(1);
    assert_eq!(x.len(), m * k, "input of {m}x{k}");
    assert_eq!(out.len(), m * n, "output of {m}x{n}");
    let threads = rayon::current_num_threads().max(1);
    let per_block = n.div_ceil(threads * 8).max(16);
    let blocks = n.div_ceil(per_block);
    let (ptr, len) = (SharedOut(out.as_mut_ptr()), out.len());
    let run = |b: usize| {
        let range = (b * per_block, ((b + 1) * per_block).min(n));
        // SAFETY: blocks write disjoint channels of every row; the slice outlives the loop.
        let out = unsafe { std::slice::from_raw_parts_mut(ptr.at(0), len) };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is only true where the CPU has AVX2 (`use_avx2`, or the tests).
            return unsafe { block_avx2(w, x, k, m, n, range, bias, out) };
        }
        let _ = avx2;
        block(dot32, w, x, k, m, n, range, bias, out)
    };
    if blocks > 1 && n * k >= 1 << 16 {
        (0..blocks).into_par_iter().for_each(run);
    } else {
        (0..blocks).for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_builds_give_the_same_bits_and_the_right_product() {
        let (n, k) = (300, 1027);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 2001) as f32 / 997.0 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 / 100.0).collect();
        for m in 1..=MAX_ROWS {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut base = vec![0f32; m * n];
            matmul_with(false, &w, n, &x, m, Some(&bias), &mut base);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                        .sum::<f64>()
                        + bias[j] as f64;
                    assert!((base[i * n + j] as f64 - exact).abs() < 1e-3, "{i},{j}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut fast = vec![0f32; m * n];
                matmul_with(true, &w, n, &x, m, Some(&bias), &mut fast);
                assert!(fast
                    .iter()
                    .zip(&base)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
}
