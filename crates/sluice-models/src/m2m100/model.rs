//! The M2M100 network in candle, mirroring transformers' `modeling_m2m_100.py` top-down:
//! embeddings, attention, encoder and decoder layers, encoder, decoder, output head.
//!
//! Weight names follow the checkpoint (`vb.pp("self_attn")`), so a missing or misnamed weight fails
//! at load with its full name. The decoder runs one token per step over a key/value cache; the
//! cross-attention keys and values are computed once per sentence, and the beams of a sentence
//! attend to them together (their queries stacked), so beams never copy the encoder states.
//!
//! Linear layers and the vocabulary head run in float32 (candle) or int8 ([`crate::int8`]), chosen
//! at load time; int8 weights are quantised tensor by tensor as the checkpoint is read.

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::{Activation, Config};
use crate::gemv;
use crate::int8::{Isa, Output, QMatrix};
use crate::rowops::{self, KvView};

type CResult<T> = candle_core::Result<T>;

/// Additive value of masked attention scores (transformers uses the dtype's minimum too).
const MASKED: f32 = f32::MIN;

/// Sinusoidal position embeddings with the padding offset of fairseq/transformers.
///
/// Rows are computed on demand from the same f32 formula the reference tabulates, so any position
/// is available (the reference also extends its table past `max_position_embeddings`).
#[derive(Debug, Clone)]
struct SinusoidalPositions {
    freqs: Vec<f32>,
    dim: usize,
    pad: u32,
}

impl SinusoidalPositions {
    fn new(dim: usize, pad: u32) -> Self {
        let half = dim / 2;
        let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
        let freqs = (0..half).map(|i| (i as f32 * -step).exp()).collect();
        Self { freqs, dim, pad }
    }

    /// Rows for `positions`, as a `[positions.len(), dim]` tensor.
    fn rows(&self, positions: &[u32], dev: &Device) -> CResult<Tensor> {
        let half = self.freqs.len();
        let mut data = vec![0f32; positions.len() * self.dim];
        for (row, &p) in data.chunks_mut(self.dim).zip(positions) {
            if p == self.pad {
                continue;
            }
            let pf = p as f32;
            for (i, f) in self.freqs.iter().enumerate() {
                let a = pf * f;
                row[i] = a.sin();
                row[half + i] = a.cos();
            }
        }
        Tensor::from_vec(data, (positions.len(), self.dim), dev)
    }
}

/// An int8 linear layer: quantised weight (laid out for its kernel) and float32 bias.
#[derive(Debug)]
struct QLinear {
    w: QMatrix,
    bias: Option<Vec<f32>>,
}

impl QLinear {
    /// `x · Wᵀ + b` over the rows of a contiguous f32 CPU tensor whose last dimension is the input.
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_then(x, false)
    }

    /// [`QLinear::forward`], then ReLU when `relu`.
    fn forward_then(&self, x: &Tensor, relu: bool) -> CResult<Tensor> {
        let mut dims = x.dims().to_vec();
        let k = dims.pop().unwrap_or(1);
        let m = x.elem_count() / k.max(1);
        let mut out = vec![0f32; m * self.w.rows()];
        with_f32_slice(x, |xs| {
            self.w
                .matmul_then(xs, m, self.bias.as_deref(), relu, &mut out)
        })?;
        dims.push(self.w.rows());
        Tensor::from_vec(out, dims, x.device())
    }
}

/// One copy within a cache buffer: `(to, from, count)`.
type RowCopy = (usize, usize, usize);

/// One layer's self-attention keys and values on the CPU, written in place each step: keys in
/// transposed blocks, `[rows, heads, capacity / KEY_BLOCK, head_dim, KEY_BLOCK]` (see
/// [`rowops::KvView`]), values `[rows, capacity, dim]`. Beam reordering moves only the rows whose
/// beam changed, and only the positions decoded so far; candle's cache had to concatenate every
/// step and re-gather every row (17% of a batch-16, 5-beam decode in `memmove`).
#[derive(Debug, Clone, Default)]
struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    rows: usize,
    cap: usize,
    dim: usize,
    heads: usize,
    len: usize,
    /// Positions to allocate for at the first step ([`DecoderState::reserve`]).
    want: usize,
}

impl KvCache {
    /// The copies `(to, from, count)` of keys (one per head) and of values that move the first
    /// `len` positions of row `src` (buffers of capacity `from_cap`) to row `dst` (capacity
    /// `to_cap`). An iterator: beam reordering asks for these for every moved row of every layer.
    fn row_copies(
        &self,
        (dst, to_cap): (usize, usize),
        (src, from_cap): (usize, usize),
    ) -> (impl Iterator<Item = RowCopy>, RowCopy) {
        let (dim, len) = (self.dim, self.len);
        let hd = dim / self.heads.max(1);
        let (t, f) = (dst * to_cap * dim, src * from_cap * dim);
        // Keys: per head, the blocks in use (a block's layout does not depend on the capacity).
        let used = len.div_ceil(rowops::KEY_BLOCK) * rowops::KEY_BLOCK * hd;
        let keys = (0..self.heads).map(move |h| (t + h * to_cap * hd, f + h * from_cap * hd, used));
        (keys, (t, f, len * dim))
    }

    /// Copies the first `len` positions of row `src` of `from` to row `dst` of `self`.
    fn copy_row(&mut self, dst: usize, from: &KvCache, src: usize) {
        let (keys, (t, f, n)) = self.row_copies((dst, self.cap), (src, from.cap));
        for (t, f, n) in keys {
            self.k[t..t + n].copy_from_slice(&from.k[f..f + n]);
        }
        self.v[t..t + n].copy_from_slice(&from.v[f..f + n]);
    }

    /// Copies the first `len` positions of row `src` to row `dst` of the same buffers.
    fn move_row(&mut self, dst: usize, src: usize) {
        let (keys, (t, f, n)) = self.row_copies((dst, self.cap), (src, self.cap));
        for (t, f, n) in keys {
            self.k.copy_within(f..f + n, t);
        }
        self.v.copy_within(f..f + n, t);
    }

    /// Appends one position (`rows × dim` keys and values) to every row.
    fn push(&mut self, k: &[f32], v: &[f32], rows: usize, dim: usize, heads: usize) {
        if self.cap == 0 || self.len == self.cap || self.rows != rows || self.dim != dim {
            // The reserved length, or doubling past it (a caller that decodes further).
            let cap = if self.cap == 0 && self.want > 0 {
                self.want
            } else {
                (self.cap * 2).max(32)
            };
            let cap = cap.max(self.len + 1);
            let cap = cap.div_ceil(rowops::KEY_BLOCK) * rowops::KEY_BLOCK;
            let mut grown = KvCache {
                k: vec![0f32; rows * cap * dim],
                v: vec![0f32; rows * cap * dim],
                rows,
                cap,
                dim,
                heads,
                len: self.len,
                want: self.want,
            };
            for r in 0..rows.min(self.rows) {
                grown.copy_row(r, self, r);
            }
            *self = grown;
        }
        let (cap, len) = (self.cap, self.len);
        let hd = dim / heads.max(1);
        let write = |((kr, vr), r): ((&mut [f32], &mut [f32]), usize)| {
            for (h, kh) in k[r * dim..(r + 1) * dim].chunks_exact(hd).enumerate() {
                let head = &mut kr[h * cap * hd..];
                for (i, &x) in kh.iter().enumerate() {
                    head[rowops::key_offset(hd, i, len)] = x;
                }
            }
            vr[len * dim..(len + 1) * dim].copy_from_slice(&v[r * dim..(r + 1) * dim]);
        };
        // Each key element goes to its own cache line: rows are written on every thread.
        use rayon::prelude::*;
        self.k
            .par_chunks_mut(cap * dim)
            .zip(self.v.par_chunks_mut(cap * dim))
            .zip(0..rows)
            .for_each(write);
        self.len += 1;
    }

    /// Row `i` becomes old row `rows[i]`; rows past `rows.len()` are dropped. `aside` holds
    /// the sources that are also overwritten meanwhile; a caller reuses it across layers and
    /// steps, and it is filled by appending, so nothing is zeroed first.
    fn select(&mut self, rows: &[u32], aside: &mut Vec<f32>) {
        let moved: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .filter(|&(i, &src)| i != src as usize)
            .map(|(i, &src)| (i, src as usize))
            .collect();
        let mut overwritten = vec![false; self.rows.max(rows.len())];
        for &(dst, _) in &moved {
            overwritten[dst] = true;
        }
        let mut saved: Vec<usize> = moved
            .iter()
            .map(|m| m.1)
            .filter(|&src| overwritten[src])
            .collect();
        saved.sort_unstable();
        saved.dedup();
        // Each saved row: its key blocks head by head, then its values.
        aside.clear();
        for &src in &saved {
            let (keys, (_, f, n)) = self.row_copies((src, self.cap), (src, self.cap));
            for (_, f, n) in keys {
                aside.extend_from_slice(&self.k[f..f + n]);
            }
            aside.extend_from_slice(&self.v[f..f + n]);
        }
        let per_row = aside.len() / saved.len().max(1);
        for &(dst, src) in &moved {
            match saved.binary_search(&src) {
                Ok(i) => {
                    let mut from = &aside[i * per_row..(i + 1) * per_row];
                    let (keys, (t, _, n)) = self.row_copies((dst, self.cap), (src, self.cap));
                    for (t, _, n) in keys {
                        self.k[t..t + n].copy_from_slice(&from[..n]);
                        from = &from[n..];
                    }
                    self.v[t..t + n].copy_from_slice(from);
                }
                Err(_) => self.move_row(dst, src),
            }
        }
        self.rows = rows.len();
    }

    /// A view of groups of one row each.
    fn view(&self) -> KvView<'_> {
        let hd = self.dim / self.heads.max(1);
        KvView {
            k: &self.k,
            v: &self.v,
            len: self.len,
            hd,
            k_group: self.cap * self.dim,
            k_head: hd * self.cap,
            v_group: self.cap * self.dim,
            v_head: hd,
            v_pos: self.dim,
        }
    }
}

/// A layer's self-attention cache: candle tensors (GPU), or a [`KvCache`] (CPU).
#[derive(Debug, Clone)]
enum SelfKv {
    Tensors(Option<(Tensor, Tensor)>),
    Cpu(KvCache),
}

/// Runs `f` on the float32 values of a CPU tensor (made contiguous first).
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> CResult<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((a, b))) => Ok(f(&cpu.as_slice::<f32>()?[a..b])),
        _ => Err(candle_core::Error::Msg(
            "int8 layers run on float32 CPU tensors".into(),
        )),
    }
}

/// Quantises a float32 weight tensor (`[out, in]`) for `isa`'s kernel.
fn quantize(w: &Tensor, isa: Isa) -> CResult<QMatrix> {
    let (rows, cols) = w.dims2()?;
    with_f32_slice(w, |ws| QMatrix::quantize(ws, rows, cols, isa))
}

/// A linear layer in float32 or int8.
#[derive(Debug, Clone)]
enum Proj {
    F32(Linear),
    Int8(Arc<QLinear>),
}

impl Proj {
    /// Loads `weight` and `bias` under `vb`, quantised when `int8` names a kernel.
    fn new(input: usize, output: usize, vb: VarBuilder, int8: Option<Isa>) -> CResult<Self> {
        let l = candle_nn::linear(input, output, vb)?;
        Ok(match int8 {
            None => Proj::F32(l),
            Some(isa) => Proj::Int8(Arc::new(QLinear {
                w: quantize(l.weight(), isa)?,
                bias: l.bias().map(|b| b.to_vec1::<f32>()).transpose()?,
            })),
        })
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    out_proj: Proj,
    heads: usize,
    head_dim: usize,
    scaling: f64,
}

impl Attention {
    fn new(dim: usize, heads: usize, vb: VarBuilder, int8: Option<Isa>) -> CResult<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            q_proj: Proj::new(dim, dim, vb.pp("q_proj"), int8)?,
            k_proj: Proj::new(dim, dim, vb.pp("k_proj"), int8)?,
            v_proj: Proj::new(dim, dim, vb.pp("v_proj"), int8)?,
            out_proj: Proj::new(dim, dim, vb.pp("out_proj"), int8)?,
            heads,
            head_dim,
            scaling: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[rows, len, dim]` -> `[rows, heads, len, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> CResult<Tensor> {
        let (rows, len, _) = x.dims3()?;
        x.reshape((rows, len, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `x`, split into heads.
    fn key_values(&self, x: &Tensor) -> CResult<(Tensor, Tensor)> {
        Ok((
            self.split_heads(&linear(&self.k_proj, x)?)?,
            self.split_heads(&linear(&self.v_proj, x)?)?,
        ))
    }

    /// Attention of `x` over `k`/`v` with an additive mask broadcastable to the scores.
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> CResult<Tensor> {
        let (rows, len, dim) = x.dims3()?;
        let q = self.split_heads(&linear(&self.q_proj, x)?)?;
        let out = Self::heads_attend(&q, k, v, mask, self.scaling)?
            .transpose(1, 2)?
            .reshape((rows, len, dim))?;
        linear(&self.out_proj, &out)
    }

    /// Scaled dot-product attention of `[b, heads, q, hd]` queries over `[b, heads, kv, hd]`.
    fn heads_attend(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scaling: f64,
    ) -> CResult<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scaling)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
    }

    /// One decoding step's attention off the CPU (the CPU step is [`DecoderLayer::step_rows`]):
    /// `x` is `[groups × beams, 1, dim]`, and the `beams` rows of each group attend to their
    /// group's keys and values (`[groups, heads, len, hd]`) with the group's additive mask
    /// (`[groups, 1, 1, len]`), if any.
    fn attend_step(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        beams: usize,
    ) -> CResult<Tensor> {
        let (rows, _, dim) = x.dims3()?;
        let groups = rows / beams;
        let q = linear(&self.q_proj, x)?
            .reshape((groups, beams, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let out = Self::heads_attend(&q, k, v, mask, self.scaling)?
            .transpose(1, 2)?
            .reshape((rows, 1, dim))?;
        linear(&self.out_proj, &out)
    }

    /// The attention product of a CPU decoding step, row by row ([`rowops::attend`]): at one
    /// query per row, candle's batched matmuls spend more in dispatch and thread hand-offs than in
    /// arithmetic. Row `r` of `q` (`rows × dim`) reads group `r / beams` of `kv`; `mask` is
    /// `[groups, len]`.
    fn attend_rows(
        &self,
        q: &[f32],
        rows: usize,
        kv: &KvView,
        mask: Option<&[f32]>,
        beams: usize,
        out: &mut Vec<f32>,
    ) {
        use rayon::prelude::*;
        let dim = q.len() / rows.max(1);
        let len = kv.len;
        let scaling = self.scaling as f32;
        // Every value is written (`rowops::attend` overwrites its row): reused, not zeroed.
        out.resize(rows * dim, 0.0);
        let row = |(r, o): (usize, &mut [f32])| {
            let g = r / beams;
            let mut scores = vec![0f32; len];
            let query = rowops::Query {
                q: &q[r * dim..(r + 1) * dim],
                g,
                mask: mask.map(|m| &m[g * len..(g + 1) * len]),
                scaling,
            };
            rowops::attend(&query, kv, &mut scores, o);
        };
        if rows * dim * len >= 1 << 15 {
            out.par_chunks_mut(dim).enumerate().for_each(row);
        } else {
            out.chunks_mut(dim).enumerate().for_each(row);
        }
    }

    /// The view of cross-attention keys (`[groups, heads, blocks, hd, KEY_BLOCK]`) and values
    /// (`[groups, heads, len, hd]`) as [`DecoderState`] keeps them on the CPU.
    fn cross_view<'a>(&self, k: &'a [f32], v: &'a [f32], blocks: usize, len: usize) -> KvView<'a> {
        let (heads, hd) = (self.heads, self.head_dim);
        let padded = blocks * rowops::KEY_BLOCK;
        KvView {
            k,
            v,
            len,
            hd,
            k_group: heads * hd * padded,
            k_head: hd * padded,
            v_group: heads * len * hd,
            v_head: len * hd,
            v_pos: hd,
        }
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    fc1: Proj,
    fc2: Proj,
    act: Activation,
}

impl FeedForward {
    fn new(
        dim: usize,
        ffn: usize,
        act: Activation,
        vb: &VarBuilder,
        int8: Option<Isa>,
    ) -> CResult<Self> {
        Ok(Self {
            fc1: Proj::new(dim, ffn, vb.pp("fc1"), int8)?,
            fc2: Proj::new(ffn, dim, vb.pp("fc2"), int8)?,
            act,
        })
    }

    /// `x += FeedForward::forward(h)` over `rows` plain rows; ReLU goes into the first product
    /// and the residual addition into the second.
    fn forward_rows_add(&self, h: &[f32], rows: usize, x: &mut [f32]) -> CResult<()> {
        if matches!(self.act, Activation::Relu) {
            let hidden = proj_rows(&self.fc1, h, rows, true)?;
            return proj_add(&self.fc2, &hidden, rows, x);
        }
        let d = h.len() / rows.max(1);
        let y = self
            .forward(&Tensor::from_slice(h, (rows, 1, d), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        add_rows(x, &y);
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        if let (Proj::Int8(q), Activation::Relu) = (&self.fc1, self.act) {
            // ReLU fused into the int8 product's output pass.
            let h = q.forward_then(x, true)?;
            return linear(&self.fc2, &h);
        }
        let h = linear(&self.fc1, x)?;
        let h = match self.act {
            Activation::Relu => h.relu()?,
            Activation::Gelu => h.gelu_erf()?,
            Activation::GeluNew => h.gelu()?,
            Activation::Silu => h.silu()?,
        };
        linear(&self.fc2, &h)
    }
}

/// Row counts up to which `W · xᵀ` beats `x · Wᵀ` (decoding steps; the encoder has more rows).
const FEW_ROWS: usize = 256;

/// Decoder rows up to which the vocabulary head is computed as `W · xᵀ`.
const HEAD_FEW_ROWS: usize = 8;

/// `x @ W^T + b` over the last dimension of `[rows, len, in]`, as one 2-D matmul.
///
/// candle's `Linear` on a 3-D input broadcasts the weight into a batched matmul: one
/// matrix-vector product per row while decoding, each reading the whole weight. Flattening the
/// rows makes it one matrix product; with few rows it is computed as `W · xᵀ`, so the gemm kernel
/// streams the weight as its left operand instead of repacking it as the right one on every call.
fn linear(p: &Proj, x: &Tensor) -> CResult<Tensor> {
    let l = match p {
        Proj::F32(l) => l,
        Proj::Int8(q) => return q.forward(x),
    };
    let (rows, len, dim) = x.dims3()?;
    if rows * len <= gemv::MAX_ROWS && x.device().is_cpu() {
        return few_rows(l.weight(), l.bias(), x);
    }
    let flat = x.reshape((rows * len, dim))?;
    let y = if rows * len <= FEW_ROWS {
        let y = l.weight().matmul(&flat.t()?.contiguous()?)?.t()?;
        match l.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y.contiguous()?,
        }
    } else {
        l.forward(&flat)?
    };
    y.reshape((rows, len, ()))
}

/// `x · Wᵀ (+ b)` on the CPU for a few rows, with the weight streamed by all threads
/// ([`crate::gemv`]).
fn few_rows(w: &Tensor, b: Option<&Tensor>, x: &Tensor) -> CResult<Tensor> {
    let mut dims = x.dims().to_vec();
    let k = dims.pop().unwrap_or(1);
    let m = x.elem_count() / k.max(1);
    let n = w.dim(0)?;
    let bias = b.map(|b| b.to_vec1::<f32>()).transpose()?;
    let mut out = vec![0f32; m * n];
    with_f32_slice(w, |ws| {
        with_f32_slice(x, |xs| {
            gemv::matmul(ws, n, xs, m, bias.as_deref(), &mut out)
        })
    })??;
    dims.push(n);
    Tensor::from_vec(out, dims, x.device())
}

/// Epsilon of every layer norm (transformers' `nn.LayerNorm` default).
const LN_EPS: f64 = 1e-5;

fn layer_norm(dim: usize, vb: VarBuilder) -> CResult<LayerNorm> {
    candle_nn::layer_norm(dim, LN_EPS, vb)
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn new(cfg: &Config, vb: VarBuilder, int8: Option<Isa>) -> CResult<Self> {
        let d = cfg.d_model;
        let heads = cfg.encoder_attention_heads;
        Ok(Self {
            self_attn: Attention::new(d, heads, vb.pp("self_attn"), int8)?,
            self_attn_layer_norm: layer_norm(d, vb.pp("self_attn_layer_norm"))?,
            ffn: FeedForward::new(d, cfg.encoder_ffn_dim, cfg.activation_function, &vb, int8)?,
            final_layer_norm: layer_norm(d, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> CResult<Tensor> {
        let h = self.self_attn_layer_norm.forward(x)?;
        let (k, v) = self.self_attn.key_values(&h)?;
        let x = (x + self.self_attn.attend(&h, &k, &v, Some(mask))?)?;
        let h = self.final_layer_norm.forward(&x)?;
        x + self.ffn.forward(&h)?
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder, int8: Option<Isa>) -> CResult<Self> {
        let d = cfg.d_model;
        let heads = cfg.decoder_attention_heads;
        Ok(Self {
            self_attn: Attention::new(d, heads, vb.pp("self_attn"), int8)?,
            self_attn_layer_norm: layer_norm(d, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: Attention::new(d, heads, vb.pp("encoder_attn"), int8)?,
            encoder_attn_layer_norm: layer_norm(d, vb.pp("encoder_attn_layer_norm"))?,
            ffn: FeedForward::new(d, cfg.decoder_ffn_dim, cfg.activation_function, &vb, int8)?,
            final_layer_norm: layer_norm(d, vb.pp("final_layer_norm"))?,
        })
    }
}

impl DecoderLayer {
    /// One decoding step of `[rows, 1, d]` states: self-attention over the cache (extended with
    /// this step's keys and values), cross-attention by groups of `beams` rows, feed-forward.
    fn step(
        &self,
        x: &Tensor,
        self_kv: &mut SelfKv,
        cross_kv: &(Tensor, Tensor),
        mask: &Tensor,
        beams: usize,
    ) -> CResult<Tensor> {
        let cache = match self_kv {
            // One layer at a time over plain rows (the per-layer fidelity test takes this way;
            // `decode_step_into` calls `step_rows` for every layer without the tensors).
            SelfKv::Cpu(cache) => {
                let (rows, len, d) = x.dims3()?;
                let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mask = with_f32_slice(mask, |m| m.to_vec())?;
                let cross = Cross {
                    kv: cross_kv,
                    mask: &mask,
                    beams,
                };
                self.step_rows(&mut xs, rows, cache, cross, &mut StepScratch::default())?;
                return Tensor::from_vec(xs, (rows, len, d), x.device());
            }
            SelfKv::Tensors(cache) => cache,
        };
        let h = self.self_attn_layer_norm.forward(x)?;
        let a = &self.self_attn;
        let (k, v) = a.key_values(&h)?;
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        let attended = a.attend_step(&h, &k, &v, None, 1)?;
        *cache = Some((k, v));
        let x = (x + attended)?;

        let h = self.encoder_attn_layer_norm.forward(&x)?;
        let (ck, cv) = cross_kv;
        let x = (x + self
            .encoder_attn
            .attend_step(&h, ck, cv, Some(mask), beams)?)?;

        let h = self.final_layer_norm.forward(&x)?;
        x + self.ffn.forward(&h)?
    }

    /// [`DecoderLayer::step`] on the CPU over plain rows: `x` is `rows × d`, updated in place.
    /// The same arithmetic as the tensor path, without a tensor, an allocation or a thread
    /// hand-off per layer norm and residual addition (they kept one core idle a fifth of a
    /// batch-16 step); the keys, values and queries share one quantisation of their input, and
    /// residuals are added as the output projections write their results.
    fn step_rows(
        &self,
        x: &mut [f32],
        rows: usize,
        cache: &mut KvCache,
        cross: Cross,
        scratch: &mut StepScratch,
    ) -> CResult<()> {
        let Cross {
            kv: cross_kv,
            mask,
            beams,
        } = cross;
        let d = x.len() / rows.max(1);
        let StepScratch { h, o } = scratch;
        let a = &self.self_attn;
        norm_rows_into(&self.self_attn_layer_norm, x, d, h)?;
        let [k, v, q] = proj_same_input([&a.k_proj, &a.v_proj, &a.q_proj], h, rows)?;
        cache.push(&k, &v, rows, d, a.heads);
        a.attend_rows(&q, rows, &cache.view(), None, 1, o);
        proj_add(&a.out_proj, o, rows, x)?;

        let c = &self.encoder_attn;
        norm_rows_into(&self.encoder_attn_layer_norm, x, d, h)?;
        let q = proj_rows(&c.q_proj, h, rows, false)?;
        let (ck, cv) = cross_kv;
        with_f32_slice(ck, |k| {
            with_f32_slice(cv, |v| {
                let view = c.cross_view(k, v, ck.dim(2)?, cv.dim(2)?);
                c.attend_rows(&q, rows, &view, Some(mask), beams, o);
                Ok::<_, candle_core::Error>(())
            })
        })???;
        proj_add(&c.out_proj, o, rows, x)?;

        norm_rows_into(&self.final_layer_norm, x, d, h)?;
        self.ffn.forward_rows_add(h, rows, x)
    }
}

/// What a decoding step's cross-attention reads: the sentences' keys and values, their source
/// mask (`[groups, src]`) and the decoder rows per sentence.
#[derive(Clone, Copy)]
struct Cross<'a> {
    kv: &'a (Tensor, Tensor),
    mask: &'a [f32],
    beams: usize,
}

/// Buffers a CPU decoding step reuses from layer to layer and step to step (written before
/// they are read, so never zeroed again).
#[derive(Debug, Clone, Default)]
struct StepScratch {
    /// Layer-normalised rows.
    h: Vec<f32>,
    /// Attention outputs.
    o: Vec<f32>,
}

/// `x += y`, element by element (what candle's addition computes).
fn add_rows(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// candle's layer norm of every `d`-long row of `x`, computed as its CPU kernel does (running
/// sums of `v` and `v²` in order, `var = E[v²] − mean²`), so results match bit for bit; rows in
/// parallel once there are enough of them to pay for the hand-off.
fn norm_rows_into(ln: &LayerNorm, x: &[f32], d: usize, out: &mut Vec<f32>) -> CResult<()> {
    use rayon::prelude::*;
    let bias = ln
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("layer norm without a bias".into()))?;
    // Every value is written below: a reused buffer is not zeroed again.
    out.resize(x.len(), 0.0);
    with_f32_slice(ln.weight(), |alpha| {
        with_f32_slice(bias, |beta| {
            let norm = |(src, dst): (&[f32], &mut [f32])| {
                let (mut sum, mut sum2) = (0f32, 0f32);
                for &v in src {
                    sum += v;
                    sum2 += v * v;
                }
                let mean = sum / d as f32;
                let var = sum2 / d as f32 - mean * mean;
                // In f32, as candle's kernel takes it.
                let inv_std = (var + LN_EPS as f32).sqrt().recip();
                for ((o, &s), (&a, &b)) in dst.iter_mut().zip(src).zip(alpha.iter().zip(beta)) {
                    *o = (s - mean) * inv_std * a + b;
                }
            };
            if x.len() >= 1 << 15 {
                x.par_chunks_exact(d)
                    .zip(out.par_chunks_exact_mut(d))
                    .for_each(norm);
            } else {
                x.chunks_exact(d)
                    .zip(out.chunks_exact_mut(d))
                    .for_each(norm);
            }
        })
    })??;
    Ok(())
}

/// [`norm_rows_into`] a new buffer.
fn norm_rows(ln: &LayerNorm, x: &[f32], d: usize) -> CResult<Vec<f32>> {
    let mut out = Vec::new();
    norm_rows_into(ln, x, d, &mut out)?;
    Ok(out)
}

/// `x · Wᵀ + b` (then ReLU when `relu`) of `rows` rows: int8 straight on the slices, float32
/// through [`linear`].
fn proj_rows(p: &Proj, x: &[f32], rows: usize, relu: bool) -> CResult<Vec<f32>> {
    let d = x.len() / rows.max(1);
    match p {
        Proj::Int8(q) => {
            Ok(q.w.product_vec(&q.w.quantize_input(x, rows), q.bias.as_deref(), relu))
        }
        Proj::F32(_) => {
            let t = Tensor::from_slice(x, (rows, 1, d), &Device::Cpu)?;
            let y = linear(p, &t)?;
            let y = if relu { y.relu()? } else { y };
            y.flatten_all()?.to_vec1::<f32>()
        }
    }
}

/// `residual += x · Wᵀ + b`: for int8, added while the product writes its tiles.
fn proj_add(p: &Proj, x: &[f32], rows: usize, residual: &mut [f32]) -> CResult<()> {
    match p {
        Proj::Int8(q) => {
            let a = q.w.quantize_input(x, rows);
            q.w.product(&a, q.bias.as_deref(), Output::Add, residual);
        }
        Proj::F32(_) => add_rows(residual, &proj_rows(p, x, rows, false)?),
    }
    Ok(())
}

/// The projections `ps` of the same rows `x`; int8 ones of one kernel share one quantisation of
/// `x` (the self-attention's keys, values and queries read the same normalised rows).
fn proj_same_input<const N: usize>(
    ps: [&Proj; N],
    x: &[f32],
    rows: usize,
) -> CResult<[Vec<f32>; N]> {
    let first = match ps[0] {
        Proj::Int8(q) => Some(&q.w),
        Proj::F32(_) => None,
    };
    let shared = first.filter(|w| {
        ps.iter()
            .all(|p| matches!(p, Proj::Int8(q) if q.w.isa() == w.isa() && q.w.cols() == w.cols()))
    });
    let Some(w) = shared else {
        let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
        for (o, p) in out.iter_mut().zip(ps) {
            *o = proj_rows(p, x, rows, false)?;
        }
        return Ok(out);
    };
    let a = w.quantize_input(x, rows);
    Ok(ps.map(|p| match p {
        Proj::Int8(q) => q.w.product_vec(&a, q.bias.as_deref(), false),
        Proj::F32(_) => unreachable!("checked above: every projection is int8"),
    }))
}

/// What the encoder hands to the decoder for a batch of sentences.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// Final hidden states, `[batch, src_len, d_model]` (padded rows are garbage past each length).
    pub hidden: Tensor,
    /// Additive attention mask over source positions, `[batch, 1, 1, src_len]`.
    pub mask: Tensor,
}

/// Decoder caches for sentences being generated together, each as `beams` consecutive rows.
#[derive(Debug, Clone)]
pub struct DecoderState {
    /// Per layer: self-attention keys and values so far.
    self_kv: Vec<SelfKv>,
    /// Per layer: cross-attention keys and values of each sentence, `[sentences, heads, src,
    /// head_dim]` (keys in transposed blocks on the CPU, `[sentences, heads, blocks, head_dim,
    /// KEY_BLOCK]`, see [`rowops::KvView`]), shared by its beams.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Source mask of each sentence.
    mask: Tensor,
    /// Decoder rows per sentence.
    beams: usize,
    /// Tokens already decoded per row.
    len: usize,
    /// Buffers of the CPU decoding step.
    scratch: StepScratch,
}

impl DecoderState {
    /// Sizes the key/value caches for `positions` decoded tokens before the first step, so they
    /// are allocated once instead of grown (a grown cache is copied, and the old one freed while
    /// the new one is live).
    pub fn reserve(&mut self, positions: usize) {
        for kv in self.self_kv.iter_mut() {
            if let SelfKv::Cpu(cache) = kv {
                cache.want = positions;
            }
        }
    }

    /// Sentences in the batch.
    pub fn sentences(&self) -> usize {
        self.mask.dims()[0]
    }

    /// Keeps the rows `rows` (in that order, repeats allowed: beams are reordered this way),
    /// which must be `beams` rows for each sentence of `sentences` (indices of the sentences
    /// kept, in order). Sentences no longer listed leave the batch.
    pub fn select(&mut self, sentences: &[u32], rows: &[u32]) -> CResult<()> {
        debug_assert_eq!(rows.len(), sentences.len() * self.beams);
        let identity = |v: &[u32], n: usize| {
            v.len() == n && v.iter().enumerate().all(|(i, &r)| r as usize == i)
        };
        let n_rows = self.sentences() * self.beams;
        if !identity(rows, n_rows) {
            let idx = Tensor::new(rows, self.mask.device())?;
            // The layers' CPU caches are independent: a share of them on each thread, one after
            // another with one aside buffer per thread (beam reordering on the decoding thread
            // alone was a tenth of a batch-16, 5-beam step in `memmove`).
            let layers = self.self_kv.len();
            let per_thread = layers.div_ceil(rayon::current_num_threads().max(1)).max(1);
            let reorder = |share: &mut [SelfKv]| -> CResult<()> {
                let mut aside = Vec::new();
                for kv in share {
                    match kv {
                        SelfKv::Tensors(Some(kv)) => {
                            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?)
                        }
                        SelfKv::Tensors(None) => {}
                        SelfKv::Cpu(cache) => cache.select(rows, &mut aside),
                    }
                }
                Ok(())
            };
            if idx.device().is_cpu() {
                use rayon::prelude::*;
                self.self_kv
                    .par_chunks_mut(per_thread)
                    .try_for_each(reorder)?;
            } else {
                reorder(&mut self.self_kv)?;
            }
        }
        if !identity(sentences, self.sentences()) {
            let idx = Tensor::new(sentences, self.mask.device())?;
            for kv in self.cross_kv.iter_mut() {
                *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
            }
            self.mask = self.mask.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

/// The vocabulary head, in float32 or int8.
#[derive(Debug, Clone)]
enum Head {
    F32(Tensor),
    Int8(Arc<QLinear>),
}

/// How the linear layers and the head of a model compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// float32 weights and products (candle).
    Float32,
    /// int8 weights quantised at load, int8 activations, run with this kernel.
    Int8(Isa),
}

/// The token embedding: float32, or int8 rows dequantised on lookup (the head's own matrix when
/// they are tied), so an int8 model keeps no float32 copy of its largest weight.
#[derive(Debug, Clone)]
enum Embedding {
    F32(Tensor),
    Int8(Arc<QLinear>),
}

/// M2M100 encoder-decoder with its tied output head.
#[derive(Debug, Clone)]
pub struct M2M100Model {
    embedding: Embedding,
    lm_head: Head,
    embed_scale: f64,
    positions: SinusoidalPositions,
    encoder_layers: Vec<EncoderLayer>,
    encoder_norm: LayerNorm,
    decoder_layers: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    pad: u32,
    vocab: usize,
    device: Device,
}

impl M2M100Model {
    /// Builds the network from checkpoint weights (`model.`-prefixed or bare names).
    pub fn new(cfg: &Config, vb: VarBuilder, precision: Precision) -> CResult<Self> {
        let int8 = match precision {
            Precision::Float32 => None,
            Precision::Int8(isa) => Some(isa),
        };
        if int8.is_some() && !vb.device().is_cpu() {
            return Err(candle_core::Error::Msg(
                "int8 runs on the CPU only; use compute type float32 on a GPU".into(),
            ));
        }
        let root = vb.clone();
        let vb = if vb.contains_tensor("model.shared.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let d = cfg.d_model;
        let shared = if vb.contains_tensor("shared.weight") {
            vb.get((cfg.vocab_size, d), "shared.weight")?
        } else {
            // Some exports keep only the encoder's copy of the tied embedding.
            vb.get((cfg.vocab_size, d), "encoder.embed_tokens.weight")?
        };
        let untied = !cfg.tie_word_embeddings && root.contains_tensor("lm_head.weight");
        let head_weight = if untied {
            root.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            shared.clone()
        };
        // int8: the float32 embedding is dropped here, before the layers load, so it never sits
        // beside them (it is 525 MB of M2M100 418M).
        let (lm_head, embedding) = match int8 {
            None => (Head::F32(head_weight), Embedding::F32(shared)),
            Some(isa) => {
                let head = Arc::new(QLinear {
                    w: quantize(&head_weight, isa)?,
                    bias: None,
                });
                drop(head_weight);
                let embedding = if untied {
                    Arc::new(QLinear {
                        w: quantize(&shared, isa)?,
                        bias: None,
                    })
                } else {
                    head.clone()
                };
                drop(shared);
                (Head::Int8(head), Embedding::Int8(embedding))
            }
        };
        let enc = vb.pp("encoder");
        let dec = vb.pp("decoder");
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::new(cfg, enc.pp(format!("layers.{i}")), int8))
            .collect::<CResult<_>>()?;
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::new(cfg, dec.pp(format!("layers.{i}")), int8))
            .collect::<CResult<_>>()?;
        Ok(Self {
            embedding,
            lm_head,
            embed_scale: if cfg.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            positions: SinusoidalPositions::new(d, cfg.pad_token_id),
            encoder_layers,
            encoder_norm: layer_norm(d, enc.pp("layer_norm"))?,
            decoder_layers,
            decoder_norm: layer_norm(d, dec.pp("layer_norm"))?,
            pad: cfg.pad_token_id,
            vocab: cfg.vocab_size,
            device: vb.device().clone(),
        })
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Rows of the vocabulary head (logits per decoder row).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Scaled token embeddings plus positions, `[rows, len, d]`.
    fn embed(&self, ids: &[u32], positions: &[u32], rows: usize) -> CResult<Tensor> {
        let len = ids.len() / rows;
        let idx = Tensor::new(ids, &self.device)?;
        let tok = match &self.embedding {
            Embedding::F32(shared) => shared.index_select(&idx, 0)?,
            Embedding::Int8(q) => {
                let d = q.w.cols();
                let mut rows = vec![0f32; ids.len() * d];
                for (row, &id) in rows.chunks_mut(d).zip(ids) {
                    if id as usize >= q.w.rows() {
                        return Err(candle_core::Error::Msg(format!(
                            "token id {id} is outside the vocabulary of {}",
                            q.w.rows()
                        )));
                    }
                    q.w.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(rows, (ids.len(), d), &self.device)?
            }
        };
        let tok = (tok * self.embed_scale)?;
        let pos = self.positions.rows(positions, &self.device)?;
        (tok + pos)?.reshape((rows, len, ()))
    }

    /// Runs the encoder over sentences of token ids (padded on the right internally).
    pub fn encode(&self, batch: &[Vec<u32>]) -> CResult<EncoderOutput> {
        let rows = batch.len();
        let len = batch.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows * len);
        let mut positions = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        for sent in batch {
            // Position of a token = pad + count of non-pad tokens up to it; pads sit at `pad`.
            let mut seen = 0;
            for j in 0..len {
                let id = sent.get(j).copied().unwrap_or(self.pad);
                ids.push(id);
                if id == self.pad {
                    positions.push(self.pad);
                } else {
                    seen += 1;
                    positions.push(self.pad + seen);
                }
                mask.push(if j < sent.len() { 0f32 } else { MASKED });
            }
        }
        let mask = Tensor::from_vec(mask, (rows, 1, 1, len), &self.device)?;
        let mut x = self.embed(&ids, &positions, rows)?;
        for layer in &self.encoder_layers {
            x = layer.forward(&x, &mask)?;
        }
        Ok(EncoderOutput {
            hidden: self.encoder_norm.forward(&x)?,
            mask,
        })
    }

    /// Decoder caches for every sentence of `enc`, each decoded as `beams` rows.
    pub fn start_decoding(&self, enc: &EncoderOutput, beams: usize) -> CResult<DecoderState> {
        let cpu = self.device.is_cpu();
        let cross_kv = self
            .decoder_layers
            .iter()
            .map(|l| {
                let (k, v) = l.encoder_attn.key_values(&enc.hidden)?;
                // The CPU step reads keys in transposed blocks (rowops::KvView).
                let k = if cpu {
                    let (g, h, src, hd) = k.dims4()?;
                    let blocks = src.div_ceil(rowops::KEY_BLOCK);
                    k.pad_with_zeros(2, 0, blocks * rowops::KEY_BLOCK - src)?
                        .reshape((g, h, blocks, rowops::KEY_BLOCK, hd))?
                        .transpose(3, 4)?
                        .contiguous()?
                } else {
                    k
                };
                Ok((k, v))
            })
            .collect::<CResult<_>>()?;
        Ok(DecoderState {
            self_kv: vec![
                if self.device.is_cpu() {
                    SelfKv::Cpu(KvCache::default())
                } else {
                    SelfKv::Tensors(None)
                };
                self.decoder_layers.len()
            ],
            cross_kv,
            mask: enc.mask.clone(),
            beams: beams.max(1),
            len: 0,
            scratch: StepScratch::default(),
        })
    }

    /// Feeds one token per row and returns next-token logits, `rows × vocab` values in f32.
    pub fn decode_step(&self, tokens: &[u32], state: &mut DecoderState) -> CResult<Vec<f32>> {
        let mut out = Vec::new();
        self.decode_step_into(tokens, state, &mut out)?;
        Ok(out)
    }

    /// As [`M2M100Model::decode_step`], writing the logits into `out` (resized), so a decoding
    /// loop reuses one vocabulary-sized buffer instead of faulting in a new one every step.
    pub fn decode_step_into(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        out: &mut Vec<f32>,
    ) -> CResult<()> {
        let rows = tokens.len();
        // Decoder inputs carry no padding mask; a generated `<pad>` still takes the pad position.
        let positions: Vec<u32> = tokens
            .iter()
            .map(|&t| {
                if t == self.pad {
                    self.pad
                } else {
                    self.pad + 1 + state.len as u32
                }
            })
            .collect();
        let mut x = self.embed(tokens, &positions, rows)?;
        if self.device.is_cpu() {
            let d = x.dim(2)?;
            let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mask = with_f32_slice(&state.mask, |m| m.to_vec())?;
            for (i, layer) in self.decoder_layers.iter().enumerate() {
                let SelfKv::Cpu(cache) = &mut state.self_kv[i] else {
                    return Err(candle_core::Error::Msg(
                        "CPU decoder without its cache".into(),
                    ));
                };
                let cross = Cross {
                    kv: &state.cross_kv[i],
                    mask: &mask,
                    beams: state.beams,
                };
                layer.step_rows(&mut xs, rows, cache, cross, &mut state.scratch)?;
            }
            state.len += 1;
            let h = norm_rows(&self.decoder_norm, &xs, d)?;
            return self.head(&Tensor::from_vec(h, (rows, d), &self.device)?, out);
        }
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            x = layer.step(
                &x,
                &mut state.self_kv[i],
                &state.cross_kv[i],
                &state.mask,
                state.beams,
            )?;
        }
        state.len += 1;
        let x = self.decoder_norm.forward(&x)?.i((.., 0, ..))?;
        self.head(&x, out)
    }

    /// Logits of `[rows, d]` final decoder states into `out` (`rows × vocab` values).
    fn head(&self, x: &Tensor, out: &mut Vec<f32>) -> CResult<()> {
        let rows = x.dim(0)?;
        out.resize(rows * self.vocab, 0.0);
        let logits = match &self.lm_head {
            Head::Int8(q) => return with_f32_slice(x, |xs| q.w.matmul(xs, rows, None, out)),
            // For a few rows, `W · xᵀ`: the 128k-row head is then the left operand, which the
            // gemm kernel streams, instead of the right one, which it repacks on every call. From
            // HEAD_FEW_ROWS rows up the repacking pays for itself and `x · Wᵀ` also skips
            // transposing the [vocab, rows] result (measured: 1.4x faster at 16 rows, 2.3x at 64;
            // BENCHMARKS.md).
            Head::F32(w) if rows <= gemv::MAX_ROWS && x.device().is_cpu() => {
                let n = w.dim(0)?;
                return with_f32_slice(w, |ws| {
                    with_f32_slice(x, |xs| gemv::matmul(ws, n, xs, rows, None, out))
                })?;
            }
            Head::F32(w) if rows <= HEAD_FEW_ROWS => {
                w.matmul(&x.t()?.contiguous()?)?.t()?.contiguous()?
            }
            Head::F32(w) => x.matmul(&w.t()?)?,
        };
        *out = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::Isa;
    use std::collections::HashMap;

    /// `‖a − b‖ / ‖a‖` over all elements.
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f32 = a.iter().map(|x| x * x).sum();
        (num / den).sqrt()
    }

    fn fixture() -> (Config, crate::weights::WeightFiles) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-m2m100");
        let cfg = Config::from_file(&dir.join("config.json")).unwrap();
        (cfg, crate::weights::weight_files(&dir).unwrap())
    }

    fn load(precision: Precision) -> M2M100Model {
        let (cfg, files) = fixture();
        let vb = files.var_builder(DType::F32, &Device::Cpu).unwrap();
        M2M100Model::new(&cfg, vb, precision).unwrap()
    }

    /// Normal-ish values (sum of uniforms) with standard deviation `std`, reproducibly.
    fn random(shape: &[usize], std: f32, seed: &mut u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed % 1_000_000) as f32 / 1_000_000.0
        };
        let v: Vec<f32> = (0..n)
            .map(|_| ((0..4).map(|_| next()).sum::<f32>() - 2.0) * std * 1.732)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn sources() -> Vec<Vec<u32>> {
        vec![
            vec![128022 % 900, 300, 301, 302, 310, 2],
            vec![128022 % 900, 400, 420, 2],
            vec![128022 % 900, 500, 510, 520, 530, 540, 550, 560, 2],
        ]
    }

    #[test]
    fn int8_layers_stay_within_2_percent_of_float32_on_the_fixture() {
        let f = load(Precision::Float32);
        let isa = crate::int8::selected_isa().unwrap();
        let q = load(Precision::Int8(isa));
        let enc = f.encode(&sources()).unwrap();
        // Each encoder layer fed the float32 layer's input.
        let mut x = {
            let rows = 3;
            let len = 9;
            let mut ids = vec![f.pad; rows * len];
            let mut pos = vec![f.pad; rows * len];
            for (r, s) in sources().iter().enumerate() {
                for (j, &t) in s.iter().enumerate() {
                    ids[r * len + j] = t;
                    pos[r * len + j] = f.pad + 1 + j as u32;
                }
            }
            f.embed(&ids, &pos, rows).unwrap()
        };
        for (i, (lf, lq)) in f.encoder_layers.iter().zip(&q.encoder_layers).enumerate() {
            let yf = lf.forward(&x, &enc.mask).unwrap();
            let yq = lq.forward(&x, &enc.mask).unwrap();
            let e = rel_err(&(&yf - &x).unwrap(), &(&yq - &x).unwrap());
            assert!(
                e < 0.02,
                "encoder layer {i}: block output relative error {e}"
            );
            x = yf;
        }
        // Each decoder layer and the head, fed the float32 model's inputs over a few steps (each
        // int8 layer keeps its own self-attention cache).
        let sf = f.start_decoding(&enc, 1).unwrap();
        let sq = q.start_decoding(&enc, 1).unwrap();
        let (mut cf, mut cq) = (sf.self_kv.clone(), sq.self_kv.clone());
        for (t, step) in [[2u32, 2, 2], [700, 701, 702], [300, 400, 500]]
            .iter()
            .enumerate()
        {
            let pos = vec![f.pad + 1 + t as u32; 3];
            let mut x = f.embed(step, &pos, 3).unwrap();
            for (i, (lf, lq)) in f.decoder_layers.iter().zip(&q.decoder_layers).enumerate() {
                let yf = lf
                    .step(&x, &mut cf[i], &sf.cross_kv[i], &sf.mask, 1)
                    .unwrap();
                let yq = lq
                    .step(&x, &mut cq[i], &sq.cross_kv[i], &sq.mask, 1)
                    .unwrap();
                let e = rel_err(&(&yf - &x).unwrap(), &(&yq - &x).unwrap());
                assert!(e < 0.02, "decoder layer {i}, step {t}: relative error {e}");
                x = yf;
            }
            let h = f.decoder_norm.forward(&x).unwrap().i((.., 0, ..)).unwrap();
            let (mut lf, mut lq) = (Vec::new(), Vec::new());
            f.head(&h, &mut lf).unwrap();
            q.head(&h, &mut lq).unwrap();
            let e = rel_err(
                &Tensor::new(lf.as_slice(), &Device::Cpu).unwrap(),
                &Tensor::new(lq.as_slice(), &Device::Cpu).unwrap(),
            );
            assert!(e < 0.02, "vocabulary head, step {t}: relative error {e}");
        }
        // End to end, errors add up over the layers but stay small.
        let qenc = q.encode(&sources()).unwrap();
        let e = rel_err(&enc.hidden, &qenc.hidden);
        assert!(e < 0.03, "encoder output: relative error {e}");
    }

    #[test]
    fn a_full_size_int8_layer_stays_within_2_percent_of_float32() {
        // facebook/m2m100_418M's layer shape, weights at the checkpoints' initialisation scale.
        let (d, ffn) = (1024, 4096);
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut t = HashMap::new();
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.insert(
                format!("self_attn.{p}.weight"),
                random(&[d, d], 0.02, &mut seed),
            );
            t.insert(format!("self_attn.{p}.bias"), random(&[d], 0.02, &mut seed));
        }
        t.insert("fc1.weight".into(), random(&[ffn, d], 0.02, &mut seed));
        t.insert("fc1.bias".into(), random(&[ffn], 0.02, &mut seed));
        t.insert("fc2.weight".into(), random(&[d, ffn], 0.02, &mut seed));
        t.insert("fc2.bias".into(), random(&[d], 0.02, &mut seed));
        for n in ["self_attn_layer_norm", "final_layer_norm"] {
            t.insert(
                format!("{n}.weight"),
                Tensor::ones(d, DType::F32, &Device::Cpu).unwrap(),
            );
            t.insert(
                format!("{n}.bias"),
                Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let (cfg, _) = fixture();
        let cfg = Config {
            d_model: d,
            encoder_attention_heads: 16,
            encoder_ffn_dim: ffn,
            ..cfg
        };
        let vb = VarBuilder::from_tensors(t, DType::F32, &Device::Cpu);
        let lf = EncoderLayer::new(&cfg, vb.clone(), None).unwrap();
        let x = random(&[4, 20, d], 1.0, &mut seed);
        let mask = Tensor::zeros((4, 1, 1, 20), DType::F32, &Device::Cpu).unwrap();
        let yf = (lf.forward(&x, &mask).unwrap() - &x).unwrap();
        let mut outputs = Vec::new();
        for isa in Isa::supported_all() {
            let lq = EncoderLayer::new(&cfg, vb.clone(), Some(isa)).unwrap();
            let yq = (lq.forward(&x, &mask).unwrap() - &x).unwrap();
            let e = rel_err(&yf, &yq);
            assert!(e < 0.02, "{isa}: block output relative error {e}");
            outputs.push(yq.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        // Every kernel gives the same bits.
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }
}
