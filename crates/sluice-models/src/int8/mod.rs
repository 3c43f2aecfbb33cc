//! int8 linear layers for CPU inference: weights quantised per output channel when the model is
//! loaded, activations per row on every call (both symmetric, in [-127, 127]), exact integer dot
//! products, and float32 rescaling of the results (CTranslate2's `int8_float32` scheme).
//!
//! The kernels are written here rather than taken from a crate: the shapes that matter are
//! decoding steps (1 to 80 rows against weights of 1024 to 128,112 rows), where the product is a
//! stream over the weights and the cost is memory and dispatch, and the row-major, per-channel
//! layout lets weights be quantised straight from the checkpoint with no packing step. The
//! measured comparison with `rten-gemm` and candle's `QMatMul` is in BENCHMARKS.md.
//!
//! Every instruction set computes the same exact `i32` dot products, and the float32 rescaling is
//! shared code, so all paths give bit-identical outputs. `SLUICE_CPU_ISA` forces a lower path
//! (`amx`, `avx512vnni`, `avxvnni`, `avx2`, `portable`), which is how CI tests each of them.
//!
//! Here: the instruction-set choice and dispatch, the quantisation and layouts shared by every
//! kernel, and the portable reference kernel. The x86-64 SIMD kernels are in `x86.rs` and the AMX
//! one (inline assembly: Rust's AMX intrinsics are not stable yet) in `amx.rs`.

use std::fmt;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Weight and activation rows are padded with zeros to a multiple of this many bytes (one
/// 512-bit register), so no kernel needs a tail loop.
const K_ALIGN: usize = 64;

/// Output channels computed together by one call of the portable kernel (weights padded to a
/// multiple).
const NR: usize = 4;

/// The widest tile any kernel computes ([`Isa::tile_cols`]).
const MAX_TILE_COLS: usize = 32;

/// What a product does with each value `y = x · w (+ b)` it computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `out = y`.
    Store,
    /// `out = max(y, 0)`.
    Relu,
    /// `out += y` (a residual connection, without another pass over the rows).
    Add,
}

/// Instruction sets with an int8 kernel, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2: `vpmaddubsw`/`vpmaddwd` with the sign trick (no 16-bit saturation), on
    /// panels of 16 channels.
    Avx2,
    /// x86-64 AVX-VNNI: `vpdpbusd` on 256-bit registers, on panels of 16 channels.
    AvxVnni,
    /// x86-64 AVX-512 VNNI: `vpdpbusd` on 512-bit registers, on panels of 32 channels.
    Avx512Vnni,
    /// x86-64 AMX-INT8: `tdpbusd` on 16 × 64-byte tiles (Sapphire Rapids and later).
    Amx,
}

impl Isa {
    /// Every kernel, lowest first.
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Amx,
    ];

    /// The name `SLUICE_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        }
    }

    /// Parses a `SLUICE_CPU_ISA` value.
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernels this CPU can run, lowest first.
    pub fn supported_all() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// Whether activations are stored offset by 128 (as `u8`) for `vpdpbusd`.
    fn offset_activations(self) -> bool {
        matches!(self, Isa::AvxVnni | Isa::Avx512Vnni | Isa::Amx)
    }

    /// Activation rows one kernel call takes at most (bounded by the register file).
    fn max_rows(self) -> usize {
        match self {
            Isa::Amx => 32,
            Isa::Avx512Vnni => 8,
            Isa::Portable | Isa::Avx2 | Isa::AvxVnni => 4,
        }
    }

    /// Channels one kernel call computes (weights are padded to a multiple).
    fn tile_cols(self) -> usize {
        match self {
            Isa::Amx | Isa::Avx512Vnni => 32,
            Isa::Avx2 | Isa::AvxVnni => 16,
            Isa::Portable => NR,
        }
    }

    /// Whether weights are stored in tiles of channels laid out for the kernel (see
    /// [`weight_offset`]) rather than row-major.
    fn packed(self) -> bool {
        self != Isa::Portable
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `SLUICE_CPU_ISA` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    /// A kernel this CPU lacks.
    #[error("SLUICE_CPU_ISA={given}: this CPU has no {isa} (it supports: {supported}, or auto)")]
    Unsupported {
        /// What was given.
        given: String,
        /// The kernel it names.
        isa: Isa,
        /// The kernels this CPU has.
        supported: String,
    },
    /// Not a kernel's name.
    #[error(
        "SLUICE_CPU_ISA={given} is not a kernel name (this CPU supports: {supported}, or auto)"
    )]
    Unknown {
        /// What was given.
        given: String,
        /// The kernels this CPU has.
        supported: String,
    },
}

/// The kernel to use: the best this CPU supports, or the one `SLUICE_CPU_ISA` names.
///
/// Decided once per process; an unknown or unsupported `SLUICE_CPU_ISA` is an error saying what
/// this CPU supports.
pub fn selected_isa() -> Result<Isa, IsaError> {
    static ISA: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
    ISA.get_or_init(|| {
        let best = *Isa::supported_all()
            .last()
            .expect("portable is always supported");
        match std::env::var("SLUICE_CPU_ISA") {
            Ok(v) if !v.trim().is_empty() && v.trim() != "auto" => {
                let names = || {
                    Isa::supported_all()
                        .iter()
                        .map(|i| i.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                match Isa::parse(&v) {
                    Some(i) if i.supported() => Ok(i),
                    Some(i) => Err(IsaError::Unsupported {
                        given: v.clone(),
                        isa: i,
                        supported: names(),
                    }),
                    None => Err(IsaError::Unknown {
                        given: v.clone(),
                        supported: names(),
                    }),
                }
            }
            _ => Ok(best),
        }
    })
    .clone()
}

/// `127 / max |x|` of a row and its scale `max |x| / 127`, or `None` when the row is all zeros or
/// not finite (it quantises to zeros).
#[inline(always)]
fn row_scale(x: &[f32]) -> Option<(f32, f32)> {
    // Sixteen running maxima, so the loop vectorises without relying on the target's features.
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let amax = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        return None;
    }
    Some((127.0 / amax, amax / 127.0))
}

/// `round(v × inv)` clamped to [-127, 127], ties to even, as an integer; NaN gives 0.
///
/// Adding 1.5 × 2²³ leaves no fraction bits, rounds as the FPU does (ties to even) and puts the
/// integer in the low mantissa bits, so this is float and integer arithmetic only: it vectorises
/// on baseline x86-64, where `round_ties_even` and a saturating `as i8` were a call and a
/// scalar conversion per value.
#[inline(always)]
fn quantize_value(v: f32, inv: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v * inv).clamp(-127.0, 127.0) + MAGIC).to_bits() as i32 - 0x4B40_0000
}

/// Symmetric quantisation of one row into `out`; returns the scale (`x ≈ q × scale`).
fn quantize_row(x: &[f32], out: &mut [i8]) -> f32 {
    let Some((inv, scale)) = row_scale(x) else {
        out.fill(0);
        return 0.0;
    };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_value(v, inv) as i8;
    }
    scale
}

/// [`quantize_row`] into bytes, each XOR `flip` (0x80 stores `q + 128` as `u8`); `out` may be
/// uninitialised (activation buffers are not zeroed before they are written).
fn quantize_row_bytes(x: &[f32], out: &mut [MaybeUninit<u8>], flip: u8) -> f32 {
    let Some((inv, scale)) = row_scale(x) else {
        for o in out.iter_mut() {
            o.write(flip);
        }
        return 0.0;
    };
    for (o, &v) in out.iter_mut().zip(x) {
        o.write((quantize_value(v, inv) as u8) ^ flip);
    }
    scale
}

/// A weight matrix `[rows, cols]` (output channels × inputs) quantised per row, laid out for the
/// kernel it was quantised for.
#[derive(Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    /// `cols` rounded up to `K_ALIGN`.
    stride: usize,
    /// `rows` rounded up to the kernel's tile width; the extra rows are zeros.
    padded_rows: usize,
    isa: Isa,
    /// `padded_rows × stride` bytes, laid out as [`weight_offset`] says.
    data: Vec<i8>,
    scales: Vec<f32>,
    /// `128 × Σ w` per row: what the +128 offset of `u8` activations adds to each dot product.
    offsets: Vec<i32>,
}

impl fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QMatrix[{}x{}, int8, {}]",
            self.rows, self.cols, self.isa
        )
    }
}

/// Where weight `(n, k)` of a matrix quantised for `isa` lives in its data: row-major, or in
/// tiles of channels (`tile_cols × stride` bytes each, in channel order) for the packed kernels.
fn weight_offset(isa: Isa, n: usize, k: usize, stride: usize) -> usize {
    match isa {
        Isa::Amx => amx_offset(n, k, stride),
        Isa::Portable => n * stride + k,
        _ => panel_offset(n, k, stride, isa.tile_cols()),
    }
}

/// Where weight `(n, k)` lives in a panel layout of `width` channels (16 for AVX2, 32 for
/// AVX-512 VNNI): inside a panel, the inputs in groups of four, each group holding the four
/// inputs of every channel in channel order (registers of 8 or 16 channels × 4 inputs, what the
/// kernels multiply by a broadcast of four activation bytes).
fn panel_offset(n: usize, k: usize, stride: usize, width: usize) -> usize {
    (n / width) * width * stride + (k / 4) * 4 * width + (n % width) * 4 + k % 4
}

/// Where weight `(n, k)` lives in the AMX layout: blocks of 16 channels × 64 inputs (1 KiB, one
/// tile), ordered by channel block then input block; inside a block, row `k / 4` holds the four
/// inputs `k & !3 ..` of each of the 16 channels in turn (the layout `tdpbusd` reads).
fn amx_offset(n: usize, k: usize, stride: usize) -> usize {
    let (nb, nl) = (n / 16, n % 16);
    let (kb, kl) = (k / 64, k % 64);
    (nb * (stride / 64) + kb) * 1024 + (kl / 4) * 64 + nl * 4 + kl % 4
}

impl QMatrix {
    /// Quantises a row-major float32 matrix for `isa`'s kernel.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, isa: Isa) -> Self {
        assert_eq!(w.len(), rows * cols, "weight of {rows}x{cols}");
        let stride = cols.div_ceil(K_ALIGN) * K_ALIGN;
        let padded_rows = rows.div_ceil(isa.tile_cols()) * isa.tile_cols();
        let mut data = vec![0i8; padded_rows * stride];
        let mut scales = vec![0f32; padded_rows];
        let mut offsets = vec![0i32; padded_rows];
        data.par_chunks_mut(stride)
            .zip(scales.par_iter_mut())
            .zip(offsets.par_iter_mut())
            .zip(w.par_chunks(cols.max(1)))
            .for_each(|(((q, s), o), row)| {
                *s = quantize_row(row, &mut q[..cols]);
                *o = 128 * q.iter().map(|&v| v as i32).sum::<i32>();
            });
        if isa.packed() {
            // One tile of channels at a time, so the extra memory is one tile's worth.
            let width = isa.tile_cols();
            let mut block = vec![0i8; width * stride];
            for nb in 0..padded_rows / width {
                let rows = &mut data[nb * width * stride..(nb + 1) * width * stride];
                for (nl, row) in rows.chunks(stride).enumerate() {
                    for (k, &v) in row.iter().enumerate() {
                        block[weight_offset(isa, nl, k, stride)] = v;
                    }
                }
                rows.copy_from_slice(&block);
            }
        }
        Self {
            rows,
            cols,
            stride,
            padded_rows,
            isa,
            data,
            scales,
            offsets,
        }
    }

    /// Output channels.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per channel.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The kernel this matrix is laid out for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.scales.len()
    }

    /// Quantised weight `(n, k)` (what the tests read a layout back with).
    #[cfg(test)]
    fn at(&self, n: usize, k: usize) -> i8 {
        self.data[weight_offset(self.isa, n, k, self.stride)]
    }

    /// Row `r` back in float32 (`q × scale`), for embedding lookups from a tied head.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let s = self.scales[r];
        let n = out.len().min(self.cols);
        // Every layout keeps a row's inputs in contiguous groups of four, so the layout is
        // computed once per group rather than per value (this runs for each generated token).
        for (g, group) in out[..n].chunks_mut(4).enumerate() {
            let at = weight_offset(self.isa, r, 4 * g, self.stride);
            let values = &self.data[at..at + group.len()];
            for (o, &q) in group.iter_mut().zip(values) {
                *o = q as f32 * s;
            }
        }
    }

    /// `x · Wᵀ (+ bias)` for `x` of `m` rows of `cols` values, into `out` (`m × rows`).
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        self.matmul_then(x, m, bias, false, out)
    }

    /// As [`QMatrix::matmul`], then `max(y, 0)` when `relu`: the activation is applied while
    /// each tile is written, instead of as another pass over the output.
    pub fn matmul_then(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) {
        let a = self.quantize_input(x, m);
        let output = if relu { Output::Relu } else { Output::Store };
        self.product(&a, bias, output, out);
    }

    /// `m` rows of `cols` values quantised for this matrix's kernel, to be reused by every
    /// product over the same input ([`QMatrix::product`] of any matrix with the same kernel and
    /// width).
    pub fn quantize_input(&self, x: &[f32], m: usize) -> Activations {
        assert_eq!(x.len(), m * self.cols, "input of {m}x{}", self.cols);
        Activations::quantize(self.isa, x, m, self.cols, self.stride)
    }

    /// `a · Wᵀ (+ bias)` of quantised rows into `out` (`a.rows × rows`), each value written as
    /// `output` says (with [`Output::Add`], `out` holds what the results are added to).
    pub fn product(&self, a: &Activations, bias: Option<&[f32]>, output: Output, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            a.rows * self.rows,
            "output of {}x{}",
            a.rows,
            self.rows
        );
        // SAFETY: `out` holds every element the product writes.
        unsafe { self.product_raw(a, bias, output, SharedOut(out.as_mut_ptr())) }
    }

    /// [`QMatrix::product`] into a new vector, written once without being zeroed first.
    pub fn product_vec(&self, a: &Activations, bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
        let n = a.rows * self.rows;
        let mut out = Vec::with_capacity(n);
        let output = if relu { Output::Relu } else { Output::Store };
        // SAFETY: the product writes each of the `n` elements exactly once before `set_len`.
        unsafe {
            self.product_raw(a, bias, output, SharedOut(out.as_mut_ptr()));
            out.set_len(n);
        }
        out
    }

    /// The product's tiles written through `out`.
    ///
    /// # Safety
    /// `out` points to `a.rows × rows` elements, initialised unless `output` is `Store` or
    /// `Relu` (those only write).
    unsafe fn product_raw(
        &self,
        a: &Activations,
        bias: Option<&[f32]>,
        output: Output,
        out: SharedOut<f32>,
    ) {
        assert!(
            a.cols == self.cols
                && a.stride == self.stride
                && a.offset == self.isa.offset_activations(),
            "activations of width {} quantised for another kernel than {self:?}",
            a.cols
        );
        if let Some(b) = bias {
            assert_eq!(b.len(), self.rows, "bias of {}", self.rows);
        }
        self.for_tiles(a, |m0, mr, n0, acc, acc_stride| {
            let nr = (self.rows - n0).min(self.isa.tile_cols());
            let scales = &self.scales[n0..n0 + nr];
            let mut y = [0f32; MAX_TILE_COLS];
            let y = &mut y[..nr];
            for i in 0..mr {
                let sa = a.scales[m0 + i];
                let acc = &acc[i * acc_stride..i * acc_stride + nr];
                match bias {
                    Some(b) => {
                        for (((y, &v), &sw), &b) in y.iter_mut().zip(acc).zip(scales).zip(&b[n0..])
                        {
                            *y = v as f32 * (sa * sw) + b;
                        }
                    }
                    None => {
                        for ((y, &v), &sw) in y.iter_mut().zip(acc).zip(scales) {
                            *y = v as f32 * (sa * sw);
                        }
                    }
                }
                // SAFETY: each (row, channel) is written by exactly one tile, within `out`; `Add`
                // reads only initialised elements.
                unsafe {
                    let dst = out.at((m0 + i) * self.rows + n0);
                    match output {
                        // A loop, not `copy_nonoverlapping`: that is a `memmove` call per row.
                        Output::Store => {
                            for (j, &y) in y.iter().enumerate() {
                                dst.add(j).write(y);
                            }
                        }
                        Output::Relu => {
                            for (j, &y) in y.iter().enumerate() {
                                dst.add(j).write(y.max(0.0));
                            }
                        }
                        Output::Add => {
                            for (d, &y) in
                                std::slice::from_raw_parts_mut(dst, nr).iter_mut().zip(&*y)
                            {
                                *d += y;
                            }
                        }
                    }
                }
            }
        });
    }

    /// Exact integer products `Σ_k qa[m,k] · qw[n,k]` of already quantised rows (for tests).
    pub fn dot_i32(&self, a: &[i8], m: usize) -> Vec<i32> {
        assert_eq!(a.len(), m * self.cols);
        let offset = self.isa.offset_activations();
        let mut act = Activations {
            data: vec![if offset { 0x80 } else { 0 }; m * self.stride],
            scales: vec![1.0; m],
            rows: m,
            cols: self.cols,
            stride: self.stride,
            offset,
        };
        for (dst, src) in act
            .data
            .chunks_mut(self.stride)
            .zip(a.chunks(self.cols.max(1)))
        {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = if offset { (s as u8) ^ 0x80 } else { s as u8 };
            }
        }
        let mut out = vec![0i32; m * self.rows];
        let ptr = SharedOut(out.as_mut_ptr());
        self.for_tiles(&act, |m0, mr, n0, acc, acc_stride| {
            for i in 0..mr {
                for j in 0..self.isa.tile_cols() {
                    if n0 + j < self.rows {
                        // SAFETY: each (row, channel) is written by exactly one tile.
                        unsafe { *ptr.at((m0 + i) * self.rows + n0 + j) = acc[i * acc_stride + j] };
                    }
                }
            }
        });
        out
    }

    /// Runs the kernel over every tile of activation rows × channels, in parallel over blocks of
    /// channels; `f(m0, mr, n0, acc, acc_stride)` receives each tile's exact dot products, row `i`
    /// of the tile at `acc[i * acc_stride..]`.
    fn for_tiles<F>(&self, a: &Activations, f: F)
    where
        F: Fn(usize, usize, usize, &[i32], usize) + Sync,
    {
        let isa = self.isa;
        let (max_rows, cols) = (isa.max_rows(), isa.tile_cols());
        let tiles = self.padded_rows / cols;
        let threads = rayon::current_num_threads().max(1);
        // A few blocks per thread balance uneven cores; a tile's weights stay in cache while every
        // activation row passes over them.
        let per_block = tiles.div_ceil(threads * 4).max(64 / cols);
        let blocks = tiles.div_ceil(per_block);
        let run = |b: usize| {
            let mut acc = vec![0i32; max_rows * cols];
            for t in b * per_block..((b + 1) * per_block).min(tiles) {
                let n0 = t * cols;
                let mut m0 = 0;
                while m0 < a.rows {
                    let mr = (a.rows - m0).min(max_rows);
                    // SAFETY: tile bounds are within the padded buffers, and the matrix was
                    // quantised for `isa`, which `Isa::supported` approved.
                    unsafe { kernel(self, a, m0, mr, n0, &mut acc) };
                    f(m0, mr, n0, &acc, cols);
                    m0 += mr;
                }
            }
        };
        if blocks <= 1 || self.padded_rows * self.stride * a.rows < 1 << 16 {
            (0..blocks).for_each(run);
        } else {
            (0..blocks).into_par_iter().for_each(run);
        }
    }
}

/// Activation rows quantised for a kernel ([`QMatrix::quantize_input`]).
pub struct Activations {
    /// `rows × stride` bytes: `i8`, or `i8 + 128` as `u8` when `offset`.
    data: Vec<u8>,
    scales: Vec<f32>,
    rows: usize,
    cols: usize,
    stride: usize,
    offset: bool,
}

impl Activations {
    fn quantize(isa: Isa, x: &[f32], rows: usize, cols: usize, stride: usize) -> Self {
        let offset = isa.offset_activations();
        let flip = if offset { 0x80 } else { 0 };
        let mut data = Vec::with_capacity(rows * stride);
        let mut scales = vec![0f32; rows];
        // Each row is written whole, its padding (the neutral byte) included, so the buffer is
        // not filled first: that fill was a serial pass over every product's input.
        let quantize = |(dst, s): (&mut [MaybeUninit<u8>], &mut f32), row: &[f32]| {
            let (values, padding) = dst.split_at_mut(cols);
            *s = quantize_row_bytes(row, values, flip);
            for p in padding {
                p.write(flip);
            }
        };
        let spare = &mut data.spare_capacity_mut()[..rows * stride];
        if rows * cols >= 1 << 16 {
            spare
                .par_chunks_mut(stride)
                .zip(scales.par_iter_mut())
                .zip(x.par_chunks(cols.max(1)))
                .for_each(|(d, row)| quantize(d, row));
        } else {
            spare
                .chunks_mut(stride)
                .zip(scales.iter_mut())
                .zip(x.chunks(cols.max(1)))
                .for_each(|(d, row)| quantize(d, row));
        }
        // SAFETY: every one of the `rows × stride` bytes was written above.
        unsafe { data.set_len(rows * stride) };
        Self {
            data,
            scales,
            rows,
            cols,
            stride,
            offset,
        }
    }
}

/// An output pointer shared by parallel blocks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(pub(crate) *mut T);
// SAFETY: tiles write disjoint elements and the borrow outlives the parallel loop.
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// The element at `i` (a method, so closures capture the whole `Sync` wrapper).
    ///
    /// # Safety
    /// `i` is in bounds and no other tile writes it.
    pub(crate) unsafe fn at(&self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// Calls the x86 kernel's instance for `$mr` rows: each listed count, then `$last` for the rest (the
/// row count is a const generic, so every count a kernel takes is its own instance).
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($kernel:ident, $mr:expr, $args:tt, $($n:literal)*; $last:literal) => {
        match $mr {
            $($n => x86::$kernel::<$n> $args,)*
            _ => x86::$kernel::<$last> $args,
        }
    };
}

/// Exact dot products of activation rows `m0..m0+mr` with the tile of channels at `n0` into
/// `acc` (row `i` at `i * isa.tile_cols()`).
///
/// # Safety
/// The matrix's kernel must be supported by this CPU; `mr ≤ isa.max_rows()`; the rows must exist.
unsafe fn kernel(w: &QMatrix, a: &Activations, m0: usize, mr: usize, n0: usize, acc: &mut [i32]) {
    let ap = a.data.as_ptr().add(m0 * a.stride);
    let k = w.stride;
    let cols = w.isa.tile_cols();
    let wp = w.data.as_ptr().add(n0 * k);
    match w.isa {
        Isa::Portable => portable(ap, wp, k, mr, acc),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(avx2, mr, (ap, wp, k, acc), 1 2 3; 4),
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => by_rows!(avx_vnni, mr, (ap, wp, k, acc), 1 2 3; 4),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => by_rows!(avx512_vnni, mr, (ap, wp, k, acc), 1 2 3 4 5 6 7; 8),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => amx::tile(ap, a.stride, mr, wp, k, acc),
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable(ap, wp, k, mr, acc),
    }
    if a.offset {
        for row in acc.chunks_mut(cols).take(mr) {
            for (v, o) in row.iter_mut().zip(&w.offsets[n0..n0 + cols]) {
                *v -= o;
            }
        }
    }
}

/// The reference kernel: plain `i32` sums of `i8 × i8` products.
///
/// # Safety
/// `a` holds `mr` rows and `w` holds `NR` rows of `k` bytes each.
unsafe fn portable(a: *const u8, w: *const i8, k: usize, mr: usize, acc: &mut [i32]) {
    for (i, row) in acc.chunks_mut(NR).enumerate().take(mr) {
        let ar = std::slice::from_raw_parts(a.add(i * k) as *const i8, k);
        for (j, v) in row.iter_mut().enumerate() {
            let wr = std::slice::from_raw_parts(w.add(j * k), k);
            *v = ar.iter().zip(wr).map(|(&x, &y)| x as i32 * y as i32).sum();
        }
    }
}
