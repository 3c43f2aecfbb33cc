//! The M2M100 network in candle, mirroring transformers' `modeling_m2m_100.py` top-down:
//! embeddings, attention, encoder and decoder layers, encoder, decoder, output head.
//!
//! Weight names follow the checkpoint (`vb.pp("self_attn")`), so a missing or misnamed weight fails
//! at load with its full name. The decoder runs one token per step over a key/value cache; the
//! cross-attention keys and values are computed once per encoder output.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::{Activation, Config};

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

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scaling: f64,
}

impl Attention {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> CResult<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            q_proj: candle_nn::linear(dim, dim, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(dim, dim, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(dim, dim, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(dim, dim, vb.pp("out_proj"))?,
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
        let scores = (q.matmul(&k.t()?)? * self.scaling)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((rows, len, dim))?;
        linear(&self.out_proj, &out)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl FeedForward {
    fn new(dim: usize, ffn: usize, act: Activation, vb: &VarBuilder) -> CResult<Self> {
        Ok(Self {
            fc1: candle_nn::linear(dim, ffn, vb.pp("fc1"))?,
            fc2: candle_nn::linear(ffn, dim, vb.pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
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
fn linear(l: &Linear, x: &Tensor) -> CResult<Tensor> {
    let (rows, len, dim) = x.dims3()?;
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

fn layer_norm(dim: usize, vb: VarBuilder) -> CResult<LayerNorm> {
    candle_nn::layer_norm(dim, 1e-5, vb)
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> CResult<Self> {
        let d = cfg.d_model;
        Ok(Self {
            self_attn: Attention::new(d, cfg.encoder_attention_heads, vb.pp("self_attn"))?,
            self_attn_layer_norm: layer_norm(d, vb.pp("self_attn_layer_norm"))?,
            ffn: FeedForward::new(d, cfg.encoder_ffn_dim, cfg.activation_function, &vb)?,
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
    fn new(cfg: &Config, vb: VarBuilder) -> CResult<Self> {
        let d = cfg.d_model;
        let heads = cfg.decoder_attention_heads;
        Ok(Self {
            self_attn: Attention::new(d, heads, vb.pp("self_attn"))?,
            self_attn_layer_norm: layer_norm(d, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: Attention::new(d, heads, vb.pp("encoder_attn"))?,
            encoder_attn_layer_norm: layer_norm(d, vb.pp("encoder_attn_layer_norm"))?,
            ffn: FeedForward::new(d, cfg.decoder_ffn_dim, cfg.activation_function, &vb)?,
            final_layer_norm: layer_norm(d, vb.pp("final_layer_norm"))?,
        })
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

/// Decoder caches for a set of rows (sentences or beams) being generated together.
#[derive(Debug, Clone)]
pub struct DecoderState {
    /// Per layer: self-attention keys and values so far, `[rows, heads, len, head_dim]`.
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer: cross-attention keys and values of the encoder output.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Source mask of each row.
    mask: Tensor,
    /// Tokens already decoded per row.
    len: usize,
}

impl DecoderState {
    /// Keeps only `rows` (in that order, repeats allowed): drops finished rows, reorders beams.
    pub fn select_rows(&mut self, rows: &[u32]) -> CResult<()> {
        let idx = Tensor::new(rows, self.mask.device())?;
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
        }
        for kv in self.cross_kv.iter_mut() {
            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
        }
        self.mask = self.mask.index_select(&idx, 0)?;
        Ok(())
    }
}

/// M2M100 encoder-decoder with its tied output head.
#[derive(Debug, Clone)]
pub struct M2M100Model {
    shared: Tensor,
    lm_head: Tensor,
    embed_scale: f64,
    positions: SinusoidalPositions,
    encoder_layers: Vec<EncoderLayer>,
    encoder_norm: LayerNorm,
    decoder_layers: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    pad: u32,
    device: Device,
}

impl M2M100Model {
    /// Builds the network from checkpoint weights (`model.`-prefixed or bare names).
    pub fn new(cfg: &Config, vb: VarBuilder) -> CResult<Self> {
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
        let lm_head = if !cfg.tie_word_embeddings && root.contains_tensor("lm_head.weight") {
            root.get((cfg.vocab_size, d), "lm_head.weight")?
        } else {
            shared.clone()
        };
        let enc = vb.pp("encoder");
        let dec = vb.pp("decoder");
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::new(cfg, enc.pp(format!("layers.{i}"))))
            .collect::<CResult<_>>()?;
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::new(cfg, dec.pp(format!("layers.{i}"))))
            .collect::<CResult<_>>()?;
        Ok(Self {
            shared,
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
            device: vb.device().clone(),
        })
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Scaled token embeddings plus positions, `[rows, len, d]`.
    fn embed(&self, ids: &[u32], positions: &[u32], rows: usize) -> CResult<Tensor> {
        let len = ids.len() / rows;
        let idx = Tensor::new(ids, &self.device)?;
        let tok = (self.shared.index_select(&idx, 0)? * self.embed_scale)?;
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

    /// Decoder caches for `rows`, each row being the encoder row `rows[i]` (beams repeat rows).
    pub fn start_decoding(&self, enc: &EncoderOutput, rows: &[u32]) -> CResult<DecoderState> {
        let idx = Tensor::new(rows, &self.device)?;
        let hidden = enc.hidden.index_select(&idx, 0)?;
        let cross_kv = self
            .decoder_layers
            .iter()
            .map(|l| l.encoder_attn.key_values(&hidden))
            .collect::<CResult<_>>()?;
        Ok(DecoderState {
            self_kv: vec![None; self.decoder_layers.len()],
            cross_kv,
            mask: enc.mask.index_select(&idx, 0)?,
            len: 0,
        })
    }

    /// Feeds one token per row and returns next-token logits, `[rows, vocab]` in f32.
    pub fn decode_step(&self, tokens: &[u32], state: &mut DecoderState) -> CResult<Tensor> {
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
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            let h = layer.self_attn_layer_norm.forward(&x)?;
            let (k, v) = layer.self_attn.key_values(&h)?;
            let (k, v) = match state.self_kv[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (x + layer.self_attn.attend(&h, &k, &v, None)?)?;
            state.self_kv[i] = Some((k, v));

            let h = layer.encoder_attn_layer_norm.forward(&x)?;
            let (ck, cv) = &state.cross_kv[i];
            x = (x + layer.encoder_attn.attend(&h, ck, cv, Some(&state.mask))?)?;

            let h = layer.final_layer_norm.forward(&x)?;
            x = (x + layer.ffn.forward(&h)?)?;
        }
        state.len += 1;
        let x = self.decoder_norm.forward(&x)?.i((.., 0, ..))?;
        // For a few rows, `W · xᵀ`: the 128k-row head is then the left operand, which the gemm
        // kernel streams, instead of the right one, which it repacks on every call. From
        // HEAD_FEW_ROWS rows up the repacking pays for itself and `x · Wᵀ` also skips transposing
        // the [vocab, rows] result (measured: 1.4x faster at 16 rows, 2.3x at 64; BENCHMARKS.md).
        let logits = if rows <= HEAD_FEW_ROWS {
            self.lm_head
                .matmul(&x.t()?.contiguous()?)?
                .t()?
                .contiguous()?
        } else {
            x.matmul(&self.lm_head.t()?)?
        };
        logits.to_dtype(DType::F32)
    }

    /// Log-probabilities over the vocabulary from logits, `[rows, vocab]`.
    pub fn log_softmax(logits: &Tensor) -> CResult<Tensor> {
        candle_nn::ops::log_softmax(logits, D::Minus1)
    }
}
