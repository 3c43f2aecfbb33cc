//! The CPU decoding step: one token per row through every decoder layer on plain `f32` rows,
//! with layer norms, projections and residual additions written straight into reused buffers.
//!
//! Apart from the network because it is a second implementation of the tensor step in the parent
//! module, for the CPU only: at one query per row, candle's tensor ops spend more in dispatch,
//! allocation and thread hand-offs than in arithmetic.

use candle_core::{Device, Tensor};
use candle_nn::LayerNorm;

use super::kv_cache::{KvCache, SelfKv, StepScratch};
use super::quantized;
use super::{
    linear, with_f32_slice, Attention, CResult, DecoderLayer, DecoderState, FeedForward,
    M2M100Model, Proj, LN_EPS,
};
use crate::m2m100::config::Activation;
use crate::rowops::{self, KvView};

/// What a decoding step's cross-attention reads: the sentences' keys and values, their source
/// mask (`[groups, src]`) and the decoder rows per sentence.
#[derive(Clone, Copy)]
pub(super) struct Cross<'a> {
    pub(super) kv: &'a (Tensor, Tensor),
    pub(super) mask: &'a [f32],
    pub(super) beams: usize,
}

impl M2M100Model {
    /// [`M2M100Model::decode_step_into`] on the CPU from the embedded tokens `x` (`[rows, 1, d]`):
    /// every layer's [`DecoderLayer::step_rows`] over one buffer of rows, then the head.
    pub(super) fn decode_step_rows(
        &self,
        x: &Tensor,
        rows: usize,
        state: &mut DecoderState,
        out: &mut Vec<f32>,
    ) -> CResult<()> {
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
        self.head(&Tensor::from_vec(h, (rows, d), &self.device)?, out)
    }
}

/// Cross-attention keys `[groups, heads, src, hd]` in the transposed blocks the CPU step reads,
/// `[groups, heads, blocks, hd, KEY_BLOCK]`, zero-padded ([`rowops::KvView`]).
pub(super) fn blocked_keys(k: &Tensor) -> CResult<Tensor> {
    let (g, h, src, hd) = k.dims4()?;
    let blocks = src.div_ceil(rowops::KEY_BLOCK);
    k.pad_with_zeros(2, 0, blocks * rowops::KEY_BLOCK - src)?
        .reshape((g, h, blocks, rowops::KEY_BLOCK, hd))?
        .transpose(3, 4)?
        .contiguous()
}

impl DecoderLayer {
    /// [`DecoderLayer::step`] on the CPU over plain rows: `x` is `rows × d`, updated in place.
    /// The same arithmetic as the tensor path, without a tensor, an allocation or a thread
    /// hand-off per layer norm and residual addition (they kept one core idle a fifth of a
    /// batch-16 step); the keys, values and queries share one quantisation of their input, and
    /// residuals are added as the output projections write their results.
    pub(super) fn step_rows(
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

impl Attention {
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

impl FeedForward {
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
        Proj::Int8(q) => Ok(q.product_rows(x, rows, relu)),
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
        Proj::Int8(q) => q.add_product(x, rows, residual),
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
    if let Some(out) = quantized::products_of_one_input(ps, x, rows) {
        return Ok(out);
    }
    let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    for (o, p) in out.iter_mut().zip(ps) {
        *o = proj_rows(p, x, rows, false)?;
    }
    Ok(out)
}
