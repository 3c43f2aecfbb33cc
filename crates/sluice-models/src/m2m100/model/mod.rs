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
//!
//! This file keeps the network as the reference reads; what only a variant needs lives beside it,
//! as candle splits its plain and quantised models: the int8 layers in `quantized.rs`, the
//! decoder's caches ([`DecoderState`]) in `kv_cache.rs`, and the CPU decoding step, which runs on
//! plain rows instead of tensors, in `cpu_step.rs`.

mod cpu_step;
mod kv_cache;
mod quantized;

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use self::cpu_step::Cross;
use self::kv_cache::StepScratch;
use self::kv_cache::{KvCache, SelfKv};
use self::quantized::QLinear;
use super::config::{Activation, Config};
use crate::gemv;
use crate::int8::Isa;

pub use self::kv_cache::DecoderState;

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
            Some(isa) => Proj::Int8(Arc::new(QLinear::from_linear(&l, isa)?)),
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
}

/// What the encoder hands to the decoder for a batch of sentences.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// Final hidden states, `[batch, src_len, d_model]` (padded rows are garbage past each length).
    pub hidden: Tensor,
    /// Additive attention mask over source positions, `[batch, 1, 1, src_len]`.
    pub mask: Tensor,
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
                let (head, embedding) = quantized::vocabulary(head_weight, shared, untied, isa)?;
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
            Embedding::Int8(q) => q.lookup(ids, &self.device)?,
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
                let k = if cpu { cpu_step::blocked_keys(&k)? } else { k };
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
            return self.decode_step_rows(&x, rows, state, out);
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
            Head::Int8(q) => return q.logits_into(x, rows, out),
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
