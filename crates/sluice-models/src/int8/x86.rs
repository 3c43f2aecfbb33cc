//! The x86-64 SIMD kernels (AVX2, AVX-VNNI, AVX-512 VNNI), apart from the dispatch in the parent
//! module so that the `unsafe` intrinsics code of one kernel family reads on its own.
//!
//! Each kernel computes `MR` activation rows × a panel of channels (16 on 256-bit registers, 32 on
//! 512-bit ones), four inputs per step, with one channel per lane of its accumulators.

use std::arch::x86_64::*;

/// AVX-512 VNNI on panels of 32 channels (see `panel_offset`): `vpdpbusd` of four `u8` (offset)
/// activation bytes, broadcast, with 16 channels × 4 inputs of `i8` weights per register; one call
/// computes `MR` rows × 32 channels with results one channel per lane (no horizontal sums).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn avx512_vnni<const MR: usize>(
    a: *const u8,
    w: *const i8,
    k: usize,
    acc: &mut [i32],
) {
    let mut s = [[_mm512_setzero_si512(); 2]; MR];
    let mut off = 0;
    while off < k {
        let w0 = _mm512_loadu_si512(w.add(off * 32) as *const _);
        let w1 = _mm512_loadu_si512(w.add(off * 32 + 64) as *const _);
        for (i, row) in s.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(i * k + off) as *const i32).read_unaligned());
            row[0] = _mm512_dpbusd_epi32(row[0], av, w0);
            row[1] = _mm512_dpbusd_epi32(row[1], av, w1);
        }
        off += 4;
    }
    for (i, row) in s.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm512_storeu_si512(acc.as_mut_ptr().add(i * 32 + j * 16) as *mut _, *v);
        }
    }
}

/// AVX-VNNI: `vpdpbusd` on 256-bit registers, on the AVX2 kernel's panels of 16 channels (four
/// `u8` (offset) activation bytes broadcast against 8 channels × 4 inputs per register).
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn avx_vnni<const MR: usize>(
    a: *const u8,
    w: *const i8,
    k: usize,
    acc: &mut [i32],
) {
    let mut s = [[_mm256_setzero_si256(); 2]; MR];
    let mut off = 0;
    while off < k {
        let w0 = _mm256_loadu_si256(w.add(off * 16) as *const _);
        let w1 = _mm256_loadu_si256(w.add(off * 16 + 32) as *const _);
        for (i, row) in s.iter_mut().enumerate() {
            let av = _mm256_set1_epi32((a.add(i * k + off) as *const i32).read_unaligned());
            row[0] = _mm256_dpbusd_avx_epi32(row[0], av, w0);
            row[1] = _mm256_dpbusd_avx_epi32(row[1], av, w1);
        }
        off += 4;
    }
    store_ymm(&s, acc);
}

/// Each row's two registers of 8 channels into `acc` (row `i` at `i * 16`).
#[inline(always)]
unsafe fn store_ymm<const MR: usize>(s: &[[__m256i; 2]; MR], acc: &mut [i32]) {
    for (i, row) in s.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm256_storeu_si256(acc.as_mut_ptr().add(i * 16 + j * 8) as *mut _, *v);
        }
    }
}

/// AVX2 on panels of 16 channels (see `panel_offset`): each step broadcasts four bytes of an
/// activation row against 8 channels × 4 inputs per register, so a tile's results land one channel
/// per lane (no horizontal sums) and one call computes `MR` rows × 16 channels. Products are
/// `|w| × sign(a, w)` with `vpmaddubsw` (at most 2 × 127 × 127 per pair, so the 16-bit sums never
/// saturate), widened with `vpmaddwd`; `|w|` is taken once per step and shared by every row
/// (a single row takes `|a| × sign(w, a)`, the same products).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn avx2<const MR: usize>(a: *const u8, w: *const i8, k: usize, acc: &mut [i32]) {
    let ones = _mm256_set1_epi16(1);
    let mut s = [[_mm256_setzero_si256(); 2]; MR];
    let mut off = 0;
    while off < k {
        let w0 = _mm256_loadu_si256(w.add(off * 16) as *const _);
        let w1 = _mm256_loadu_si256(w.add(off * 16 + 32) as *const _);
        if MR == 1 {
            // One row: `|a| × sign(w, a)` takes one absolute value per step instead of two.
            let av = _mm256_set1_epi32((a.add(off) as *const i32).read_unaligned());
            let m = _mm256_abs_epi8(av);
            let p0 = _mm256_maddubs_epi16(m, _mm256_sign_epi8(w0, av));
            let p1 = _mm256_maddubs_epi16(m, _mm256_sign_epi8(w1, av));
            s[0][0] = _mm256_add_epi32(s[0][0], _mm256_madd_epi16(p0, ones));
            s[0][1] = _mm256_add_epi32(s[0][1], _mm256_madd_epi16(p1, ones));
        } else {
            let (m0, m1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
            for (i, row) in s.iter_mut().enumerate() {
                let av = _mm256_set1_epi32((a.add(i * k + off) as *const i32).read_unaligned());
                let p0 = _mm256_maddubs_epi16(m0, _mm256_sign_epi8(av, w0));
                let p1 = _mm256_maddubs_epi16(m1, _mm256_sign_epi8(av, w1));
                row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(p0, ones));
                row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(p1, ones));
            }
        }
        off += 4;
    }
    store_ymm(&s, acc);
}
