//! Tests of every kernel against the same exact products and of the shared quantisation, apart
//! from the code so that the kernels and their dispatch read without scrolling past them.

use super::*;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn i8(&mut self) -> i8 {
        ((self.next() % 255) as i32 - 127) as i8
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
}

fn int8_cases() -> Vec<(usize, usize, usize)> {
    // (m, n, k): odd sizes around the register widths, and the model's real widths.
    let mut v = vec![];
    for &k in &[1, 31, 32, 33, 63, 64, 65, 127, 200, 1024] {
        for &(m, n) in &[
            (1, 1),
            (1, 5),
            (2, 3),
            (3, 4),
            (4, 9),
            (5, 7),
            (9, 13),
            (17, 33),
        ] {
            v.push((m, n, k));
        }
    }
    v.push((16, 64, 4096));
    v.push((40, 70, 130));
    v
}

fn weight_from(q: &[i8], n: usize, k: usize, isa: Isa) -> QMatrix {
    // Each row holds its own maximum 127, so quantising q/127 gives q back.
    let w: Vec<f32> = q.iter().map(|&v| v as f32 / 127.0).collect();
    let m = QMatrix::quantize(&w, n, k, isa);
    for r in 0..n {
        for c in 0..k {
            assert_eq!(m.at(r, c), q[r * k + c]);
        }
    }
    m
}

fn check_exact(fill: impl Fn(&mut Rng, usize) -> i8) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (m, n, k) in int8_cases() {
        let mut qw: Vec<i8> = (0..n * k).map(|i| fill(&mut rng, i)).collect();
        for r in 0..n {
            qw[r * k] = 127; // every row's maximum is 127: quantisation is then the identity
        }
        let qa: Vec<i8> = (0..m * k).map(|i| fill(&mut rng, i)).collect();
        let want: Vec<i32> = (0..m)
            .flat_map(|i| {
                let (qa, qw) = (&qa, &qw);
                (0..n).map(move |j| {
                    (0..k)
                        .map(|t| qa[i * k + t] as i32 * qw[j * k + t] as i32)
                        .sum()
                })
            })
            .collect();
        for isa in Isa::supported_all() {
            let w = weight_from(&qw, n, k, isa);
            assert_eq!(w.dot_i32(&qa, m), want, "{isa}: m={m} n={n} k={k}");
        }
    }
}

#[test]
fn every_kernel_computes_exact_dot_products_on_random_values() {
    check_exact(|r, _| r.i8());
}

#[test]
fn every_kernel_computes_exact_dot_products_at_the_extremes() {
    check_exact(|_, i| if i % 3 == 0 { -127 } else { 127 });
    check_exact(|_, _| 127);
    check_exact(|_, _| -127);
    check_exact(|_, i| if i % 2 == 0 { 0 } else { -127 });
}

#[test]
fn every_kernel_gives_bit_identical_float_outputs() {
    let mut rng = Rng(42);
    for (m, n, k) in [
        (1, 37, 100),
        (5, 64, 1024),
        (16, 12, 65),
        (80, 40, 256),
        (33, 5, 64),
    ] {
        let w: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32() * 3.0).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let mut base = vec![0f32; m * n];
        let q = QMatrix::quantize(&w, n, k, Isa::Portable);
        q.matmul(&x, m, Some(&bias), &mut base);
        for isa in Isa::supported_all() {
            let mut out = vec![0f32; m * n];
            QMatrix::quantize(&w, n, k, isa).matmul(&x, m, Some(&bias), &mut out);
            assert!(
                out.iter()
                    .zip(&base)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa}: m={m} n={n} k={k}"
            );
        }
        // And the product is close to the float one.
        let mut worst = 0f32;
        let mut norm = 0f32;
        for i in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>() + bias[j];
                worst = worst.max((exact - base[i * n + j]).abs());
                norm = norm.max(exact.abs());
            }
        }
        assert!(worst <= 0.02 * norm, "m={m} n={n} k={k}: {worst} vs {norm}");
    }
}

#[test]
fn every_output_mode_writes_what_a_separate_pass_would() {
    let mut rng = Rng(7);
    for (m, n, k) in [(1, 37, 100), (16, 70, 64), (80, 33, 257)] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32() * 2.0).collect();
        let residual: Vec<f32> = (0..m * n).map(|_| rng.f32()).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
        let w1: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
        let w2: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
        for isa in Isa::supported_all() {
            let (q1, q2) = (
                QMatrix::quantize(&w1, n, k, isa),
                QMatrix::quantize(&w2, n, k, isa),
            );
            let mut plain = vec![0f32; m * n];
            q1.matmul(&x, m, Some(&bias), &mut plain);
            // One quantised input serves several matrices of the same width.
            let a = q1.quantize_input(&x, m);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&q1.product_vec(&a, Some(&bias), false)), bits(&plain));
            let mut second = vec![0f32; m * n];
            q2.matmul(&x, m, None, &mut second);
            assert_eq!(
                bits(&q2.product_vec(&a, None, false)),
                bits(&second),
                "{isa}"
            );
            let relu: Vec<f32> = plain.iter().map(|v| v.max(0.0)).collect();
            assert_eq!(bits(&q1.product_vec(&a, Some(&bias), true)), bits(&relu));
            let mut added = residual.clone();
            q1.product(&a, Some(&bias), Output::Add, &mut added);
            let want: Vec<f32> = residual.iter().zip(&plain).map(|(r, p)| r + p).collect();
            assert_eq!(bits(&added), bits(&want), "{isa}: m={m} n={n} k={k}");
        }
    }
}

#[test]
#[should_panic(expected = "quantised for another kernel")]
fn activations_of_another_width_are_refused() {
    let q = QMatrix::quantize(&[0.5; 8], 2, 4, Isa::Portable);
    let other = QMatrix::quantize(&[0.5; 6], 2, 3, Isa::Portable);
    let a = other.quantize_input(&[1.0; 3], 1);
    q.product_vec(&a, None, false);
}

#[test]
fn quantised_values_round_ties_to_even_and_clamp() {
    let want = |v: f32| v.round_ties_even().clamp(-127.0, 127.0) as i32;
    let mut v = -130.0f32;
    while v <= 130.0 {
        assert_eq!(quantize_value(v, 1.0), want(v), "{v}");
        v += 0.125;
    }
    for v in [
        0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -126.5, 0.49999997, 126.49999, 1e30, -1e30,
    ] {
        assert_eq!(quantize_value(v, 1.0), want(v), "{v}");
    }
    assert_eq!(quantize_value(f32::NAN, 1.0) as i8, 0);
    let mut q = [0i8; 3];
    assert_eq!(quantize_row(&[1.0, -2.0, 0.5], &mut q), 2.0 / 127.0);
    assert_eq!(q, [64, -127, 32]);
    let mut b = [MaybeUninit::uninit(); 3];
    quantize_row_bytes(&[1.0, -2.0, 0.5], &mut b, 0x80);
    // SAFETY: all three bytes were written.
    assert_eq!(
        b.map(|b| unsafe { b.assume_init() }),
        [64 + 128, 1, 32 + 128]
    );
}

#[test]
fn zero_rows_and_columns_are_harmless() {
    for isa in Isa::supported_all() {
        let q = QMatrix::quantize(&[0.0; 6], 2, 3, isa);
        let mut out = vec![1f32; 2];
        q.matmul(&[1.0, 2.0, 3.0], 1, None, &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }
}

#[test]
fn isa_names_round_trip() {
    for isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
    assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
    assert_eq!(Isa::parse("sse"), None);
}

#[test]
fn every_layout_dequantizes_each_row_to_its_values() {
    let mut rng = Rng(7);
    for &(n, k) in &[(5, 1), (33, 63), (40, 130)] {
        let mut q: Vec<i8> = (0..n * k).map(|_| rng.i8()).collect();
        for r in 0..n {
            q[r * k] = 127; // quantisation is then the identity (see `weight_from`)
        }
        for isa in Isa::supported_all() {
            let m = weight_from(&q, n, k, isa);
            for r in 0..n {
                let mut out = vec![0f32; k];
                m.dequantize_row(r, &mut out);
                let want: Vec<f32> = (0..k).map(|c| m.at(r, c) as f32 * m.scales[r]).collect();
                assert_eq!(out, want, "{isa}: row {r} of {n}x{k}");
            }
        }
    }
}
