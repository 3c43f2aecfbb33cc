//! float32 kernels of a decoding step that work row by row: the exponential, log-softmax of
//! vocabulary rows, and attention of one query over a cache of keys and values.
//!
//! Written here because these run on a few rows of short vectors, thousands of times per step:
//! candle's batched tensor ops spend more in dispatch and thread hand-offs than in arithmetic, and
//! libm's `expf` is a call per value that does not vectorise (it was 7% of a batch-16, 5-beam
//! decode). No crate offers a vectorisable `exp` whose result is the same on every build.
//!
//! Like [`crate::gemv`], the same source is compiled for baseline x86-64 and for AVX2: every lane
//! computes the same multiplies and adds in the same order (Rust never fuses them on its own), so
//! both builds give identical bits; `SLUICE_CPU_ISA=portable` forces the baseline one.

use crate::gemv::use_avx2;

/// Lanes of the running sums and maxima (a fixed count, so every build reduces the same way).
const LANES: usize = 16;

/// `eˣ` within 2 ulp for `x ≤ 88` (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial in `r`
/// and `2ⁿ` from the exponent bits); values below −87 give 0, as their true value is under the
/// smallest normal float.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    const MAGIC_BITS: i32 = 0x4B40_0000;
    // A comparison rather than `min`, so NaN stays NaN.
    let c = if x > 88.0 { 88.0 } else { x };
    // n = round(c / ln 2): the addition rounds, and the integer sits in the low mantissa bits.
    let shifted = c * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted.to_bits() as i32 - MAGIC_BITS;
    let fx = shifted - MAGIC;
    // Cody–Waite: ln 2 split in two so `c − n ln 2` keeps its low bits.
    let r = c - fx * 0.693_359_4;
    let r = r - fx * -2.121_944_4e-4;
    let z = r * r;
    let mut y = 1.987_569_1e-4 * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    let y = y * z + r + 1.0;
    let scale = f32::from_bits(((n + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// Largest value of `row` (NaN ignored; −∞ for an empty row).
#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `Σ exp(v − max)` over `row`, in [`LANES`] running sums reduced pairwise.
#[inline(always)]
fn sum_exp(row: &[f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += exp(v - max);
        }
    }
    let mut tail = 0f32;
    for &v in chunks.remainder() {
        tail += exp(v - max);
    }
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0] + tail
}

#[inline(always)]
fn log_softmax_body(row: &mut [f32]) {
    let max = max_of(row);
    let ln_sum = sum_exp(row, max).ln();
    for v in row.iter_mut() {
        *v = (*v - max) - ln_sum;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn log_softmax_avx2(row: &mut [f32]) {
    log_softmax_body(row)
}

/// Turns `row` into log-probabilities in place, rounding as torch's `log_softmax` does:
/// `(x − max) − ln Σ exp(x − max)`.
pub fn log_softmax(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: `use_avx2` checked the CPU.
        return unsafe { log_softmax_avx2(row) };
    }
    log_softmax_body(row)
}

/// Keys and values of attention groups (a sentence, or one decoder row) as strided slices.
///
/// Keys are stored in blocks of [`KEY_BLOCK`] positions, each block transposed: element `i` of
/// the key at position `j` of group `g`, head `h` is at
/// `g × k_group + h × k_head + (j / B) × hd × B + i × B + j mod B` (`B` = [`KEY_BLOCK`]). A
/// query's scores are then sums over contiguous positions, vectorised across positions without a
/// horizontal reduction per key, and a block is one contiguous read. The last block is whole
/// (its padding is read and ignored). The value at position `j` starts at
/// `g × v_group + h × v_head + j × v_pos`.
pub(crate) struct KvView<'a> {
    /// Keys, in transposed blocks.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Positions.
    pub len: usize,
    /// Values per head.
    pub hd: usize,
    /// Stride between groups of keys.
    pub k_group: usize,
    /// Stride between heads of keys.
    pub k_head: usize,
    /// Stride between groups of values.
    pub v_group: usize,
    /// Stride between heads of values.
    pub v_head: usize,
    /// Stride between positions of values.
    pub v_pos: usize,
}

/// Positions per block of keys (two AVX2 registers of scores).
pub(crate) const KEY_BLOCK: usize = 16;
const BLOCK: usize = KEY_BLOCK;

/// Offset of key element `i` of position `j` within a head's blocks.
#[inline(always)]
pub(crate) fn key_offset(hd: usize, i: usize, j: usize) -> usize {
    (j / BLOCK) * hd * BLOCK + i * BLOCK + j % BLOCK
}

/// Scores of query head `q` against one block of keys (`q.len()` rows of [`BLOCK`] positions):
/// score `l` sums `q_i k_il` in four running sums by `i mod 4` (a remainder of `i` goes to the
/// first), added as `(s0 + s1) + (s2 + s3)`: eight independent chains of AVX2 additions instead
/// of two. [`block_scores_avx2`] computes exactly these sums.
#[inline(always)]
fn block_scores(q: &[f32], blk: &[f32]) -> [f32; BLOCK] {
    let mut acc = [[0f32; BLOCK]; 4];
    let main = q.len() / 4 * 4;
    for i in 0..q.len() {
        let c = if i < main { i % 4 } else { 0 };
        let k = &blk[i * BLOCK..(i + 1) * BLOCK];
        for (a, &k) in acc[c].iter_mut().zip(k) {
            *a += q[i] * k;
        }
    }
    let mut out = [0f32; BLOCK];
    for (l, o) in out.iter_mut().enumerate() {
        *o = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
    out
}

/// [`block_scores`] in eight 256-bit accumulators (multiply, then add: the same roundings).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_scores_avx2(q: &[f32], blk: &[f32]) -> [f32; BLOCK] {
    use std::arch::x86_64::*;
    assert!(blk.len() >= q.len() * BLOCK);
    let kp = blk.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let main = q.len() / 4 * 4;
    let mut i = 0;
    while i < main {
        for (c, sum) in acc.iter_mut().enumerate() {
            let qi = _mm256_set1_ps(q[i + c]);
            let k = kp.add((i + c) * BLOCK);
            sum[0] = _mm256_add_ps(sum[0], _mm256_mul_ps(qi, _mm256_loadu_ps(k)));
            sum[1] = _mm256_add_ps(sum[1], _mm256_mul_ps(qi, _mm256_loadu_ps(k.add(8))));
        }
        i += 4;
    }
    while i < q.len() {
        let qi = _mm256_set1_ps(q[i]);
        let k = kp.add(i * BLOCK);
        acc[0][0] = _mm256_add_ps(acc[0][0], _mm256_mul_ps(qi, _mm256_loadu_ps(k)));
        acc[0][1] = _mm256_add_ps(acc[0][1], _mm256_mul_ps(qi, _mm256_loadu_ps(k.add(8))));
        i += 1;
    }
    let mut out = [0f32; BLOCK];
    for half in [0, 1] {
        let [a0, a1, a2, a3] = acc.map(|sum| sum[half]);
        let s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * half), s);
    }
    out
}

/// `out = Σ_j (p_j / sum) v_j` over the values `v[j × pos..][..out.len()]`, adding in order of
/// `j` from zero. At 64 values (M2M100's head size) the sums stay in registers: the generic
/// loop kept them in memory, a load and a store per addition.
#[inline(always)]
fn weighted_sum(p: &[f32], sum: f32, v: &[f32], pos: usize, out: &mut [f32]) {
    if let Ok(out) = <&mut [f32; 64]>::try_from(&mut *out) {
        let mut acc = [0f32; 64];
        for (j, pj) in p.iter().enumerate() {
            let w = pj / sum;
            let vj: &[f32; 64] = v[j * pos..j * pos + 64].try_into().expect("64 values");
            for (a, b) in acc.iter_mut().zip(vj) {
                *a += w * b;
            }
        }
        *out = acc;
        return;
    }
    out.fill(0.0);
    let n = out.len();
    for (j, pj) in p.iter().enumerate() {
        let w = pj / sum;
        for (a, b) in out.iter_mut().zip(&v[j * pos..j * pos + n]) {
            *a += w * b;
        }
    }
}

/// One query row and what it attends with.
pub(crate) struct Query<'a> {
    /// The row, `heads × hd` values.
    pub q: &'a [f32],
    /// The group of keys and values it reads.
    pub g: usize,
    /// The group's additive mask, one value per position.
    pub mask: Option<&'a [f32]>,
    /// Factor of the scores.
    pub scaling: f32,
}

/// One query row's attention over its group of `kv`, every head, with `scores_of` computing a
/// block of scores; `scores` is scratch of at least `kv.len` values.
#[inline(always)]
fn attend_body(
    scores_of: impl Fn(&[f32], &[f32]) -> [f32; BLOCK],
    query: &Query,
    kv: &KvView,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (hd, len, g) = (kv.hd, kv.len, query.g);
    let p = &mut scores[..len];
    for (h, (qh, oh)) in query
        .q
        .chunks_exact(hd)
        .zip(out.chunks_exact_mut(hd))
        .enumerate()
    {
        let kb = g * kv.k_group + h * kv.k_head;
        for j0 in (0..len).step_by(BLOCK) {
            let blk = &kv.k[kb + (j0 / BLOCK) * hd * BLOCK..][..hd * BLOCK];
            let acc = scores_of(qh, blk);
            let n = (len - j0).min(BLOCK);
            p[j0..j0 + n].copy_from_slice(&acc[..n]);
        }
        for (j, pj) in p.iter_mut().enumerate() {
            *pj *= query.scaling;
            if let Some(m) = query.mask {
                *pj += m[j];
            }
        }
        let max = max_of(p);
        let mut sum = 0f32;
        for pj in p.iter_mut() {
            *pj = exp(*pj - max);
            sum += *pj;
        }
        let vb = g * kv.v_group + h * kv.v_head;
        weighted_sum(p, sum, &kv.v[vb..], kv.v_pos, oh);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(query: &Query, kv: &KvView, scores: &mut [f32], out: &mut [f32]) {
    // SAFETY: this function only runs where AVX2 is available.
    let scores_of = |q: &[f32], blk: &[f32]| unsafe { block_scores_avx2(q, blk) };
    attend_body(scores_of, query, kv, scores, out)
}

/// Attention of one query row over its group of `kv` into `out`: scores
/// `(q · k) × scaling + mask`, softmax `exp(s − max) / Σ`, then `Σ p v`; `scores` is scratch of
/// at least `kv.len` values.
pub(crate) fn attend(query: &Query, kv: &KvView, scores: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: `use_avx2` checked the CPU.
        return unsafe { attend_avx2(query, kv, scores, out) };
    }
    attend_body(block_scores, query, kv, scores, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_and_underflows_to_zero() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                (got - want).abs() <= 2.0 * ulp as f64,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
            })
            .collect()
    }

    #[test]
    fn log_softmax_matches_f64_and_both_builds_agree() {
        for n in [1, 15, 16, 17, 1000, 128_112] {
            let mut row = values(n, n as u64);
            if n > 1 {
                row[n / 2] = f32::NEG_INFINITY;
            }
            let orig = row.clone();
            log_softmax_body(&mut row);
            let max = orig.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = orig
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            for (&got, &v) in row.iter().zip(&orig) {
                if v == f32::NEG_INFINITY {
                    assert_eq!(got, f32::NEG_INFINITY);
                } else {
                    assert!((got as f64 - (v as f64 - lse)).abs() < 1e-4, "{n}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut fast = orig.clone();
                // SAFETY: checked above.
                unsafe { log_softmax_avx2(&mut fast) };
                assert!(fast
                    .iter()
                    .zip(&row)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn attention_matches_f64_and_both_builds_agree() {
        // Head sizes with and without a remainder of four; lengths in one and several blocks.
        for (heads, hd, len) in [(4, 64, 37), (3, 6, 5), (2, 7, 16)] {
            check_attention(heads, hd, len);
        }
    }

    fn check_attention(heads: usize, hd: usize, len: usize) {
        let groups = 2;
        let padded = len.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let k = values(groups * heads * padded * hd, 1);
        let v = values(groups * heads * len * hd, 2);
        let q: Vec<f32> = values(heads * hd, 3).iter().map(|x| x / 10.0).collect();
        let mut mask = vec![0f32; len];
        mask[len / 2] = f32::MIN;
        // Keys [group][head][blocks of positions], values [group][position][head][hd], as the
        // self-attention cache lays them out.
        let kv = KvView {
            k: &k,
            v: &v,
            len,
            hd,
            k_group: heads * hd * padded,
            k_head: hd * padded,
            v_group: len * heads * hd,
            v_head: hd,
            v_pos: heads * hd,
        };
        let scaling = (hd as f32).powf(-0.5);
        let mut scores = vec![0f32; len];
        let mut out = vec![0f32; heads * hd];
        let query = Query {
            q: &q,
            g: 1,
            mask: Some(&mask),
            scaling,
        };
        attend_body(block_scores, &query, &kv, &mut scores, &mut out);
        for h in 0..heads {
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    let at = kv.k_group + h * kv.k_head;
                    let d: f64 = (0..hd)
                        .map(|i| q[h * hd + i] as f64 * k[at + key_offset(hd, i, j)] as f64)
                        .sum();
                    d * scaling as f64 + mask[j] as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let total: f64 = e.iter().sum();
            for i in 0..hd {
                let want: f64 = (0..len)
                    .map(|j| e[j] / total * v[kv.v_group + h * kv.v_head + j * kv.v_pos + i] as f64)
                    .sum();
                assert!(
                    (out[h * hd + i] as f64 - want).abs() < 1e-4,
                    "{hd}: {h},{i}"
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            let mut fast = vec![0f32; heads * hd];
            // SAFETY: checked above.
            unsafe { attend_avx2(&query, &kv, &mut scores, &mut fast) };
            assert!(
                fast.iter()
                    .zip(&out)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{hd}"
            );
        }
    }
}
