//! The int8 side of the network: linear layers whose weights are quantised as the checkpoint is
//! read ([`QLinear`]), the vocabulary head and token embedding (one int8 matrix when tied), and the
//! products a CPU step takes straight from rows.
//!
//! Apart from the network, as candle keeps `quantized_t5.rs` beside `t5.rs`: the float32 path
//! reads as the reference does, and what quantisation changes (the weights' layout, the fused
//! ReLU and residual additions, one quantisation of an input shared by several products) is here.
//! The kernels themselves are [`crate::int8`]'s.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::Linear;

use super::{with_f32_slice, CResult, Proj};
use crate::int8::{Isa, Output, QMatrix};

/// An int8 linear layer: quantised weight (laid out for its kernel) and float32 bias.
#[derive(Debug)]
pub(super) struct QLinear {
    w: QMatrix,
    bias: Option<Vec<f32>>,
}

impl QLinear {
    /// A loaded float32 layer, quantised for `isa`'s kernel (the bias stays float32).
    pub(super) fn from_linear(l: &Linear, isa: Isa) -> CResult<Self> {
        Ok(Self {
            w: quantize(l.weight(), isa)?,
            bias: l.bias().map(|b| b.to_vec1::<f32>()).transpose()?,
        })
    }

    /// A weight without a bias (the vocabulary head, the embedding), quantised for `isa`.
    fn from_weight(w: &Tensor, isa: Isa) -> CResult<Self> {
        Ok(Self {
            w: quantize(w, isa)?,
            bias: None,
        })
    }

    /// `x · Wᵀ + b` over the rows of a contiguous f32 CPU tensor whose last dimension is the input.
    pub(super) fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.forward_then(x, false)
    }

    /// [`QLinear::forward`], then ReLU when `relu`.
    pub(super) fn forward_then(&self, x: &Tensor, relu: bool) -> CResult<Tensor> {
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

    /// `x · Wᵀ + b` (then ReLU when `relu`) of `rows` plain rows, into a new vector.
    pub(super) fn product_rows(&self, x: &[f32], rows: usize, relu: bool) -> Vec<f32> {
        self.w
            .product_vec(&self.w.quantize_input(x, rows), self.bias.as_deref(), relu)
    }

    /// `residual += x · Wᵀ + b` of `rows` plain rows, added while the product writes its tiles.
    pub(super) fn add_product(&self, x: &[f32], rows: usize, residual: &mut [f32]) {
        let a = self.w.quantize_input(x, rows);
        self.w
            .product(&a, self.bias.as_deref(), Output::Add, residual);
    }

    /// Logits of `rows` final decoder states `x` (`[rows, d]`) into `out` (`rows × vocab`).
    pub(super) fn logits_into(&self, x: &Tensor, rows: usize, out: &mut [f32]) -> CResult<()> {
        with_f32_slice(x, |xs| self.w.matmul(xs, rows, None, out))
    }

    /// Embedding rows of `ids` dequantised, `[ids.len(), d]`; an id past the vocabulary is an
    /// error, not a panic.
    pub(super) fn lookup(&self, ids: &[u32], device: &Device) -> CResult<Tensor> {
        let d = self.w.cols();
        let mut rows = vec![0f32; ids.len() * d];
        for (row, &id) in rows.chunks_mut(d).zip(ids) {
            if id as usize >= self.w.rows() {
                return Err(candle_core::Error::Msg(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.w.rows()
                )));
            }
            self.w.dequantize_row(id as usize, row);
        }
        Tensor::from_vec(rows, (ids.len(), d), device)
    }
}

/// Quantises a float32 weight tensor (`[out, in]`) for `isa`'s kernel.
fn quantize(w: &Tensor, isa: Isa) -> CResult<QMatrix> {
    let (rows, cols) = w.dims2()?;
    with_f32_slice(w, |ws| QMatrix::quantize(ws, rows, cols, isa))
}

/// The int8 vocabulary head and token embedding (one matrix when they are tied), from float32
/// weights taken by value so that each is freed as soon as it is quantised.
pub(super) fn vocabulary(
    head_weight: Tensor,
    shared: Tensor,
    untied: bool,
    isa: Isa,
) -> CResult<(Arc<QLinear>, Arc<QLinear>)> {
    let head = Arc::new(QLinear::from_weight(&head_weight, isa)?);
    drop(head_weight);
    let embedding = if untied {
        Arc::new(QLinear::from_weight(&shared, isa)?)
    } else {
        head.clone()
    };
    drop(shared);
    Ok((head, embedding))
}

/// The products of `ps` over the same rows `x` from one quantisation of `x`, when every one is
/// int8 for the same kernel and width; `None` otherwise (each then takes its own input).
pub(super) fn products_of_one_input<const N: usize>(
    ps: [&Proj; N],
    x: &[f32],
    rows: usize,
) -> Option<[Vec<f32>; N]> {
    let first = match ps[0] {
        Proj::Int8(q) => Some(&q.w),
        Proj::F32(_) => None,
    };
    let w = first.filter(|w| {
        ps.iter()
            .all(|p| matches!(p, Proj::Int8(q) if q.w.isa() == w.isa() && q.w.cols() == w.cols()))
    })?;
    let a = w.quantize_input(x, rows);
    Some(ps.map(|p| match p {
        Proj::Int8(q) => q.w.product_vec(&a, q.bias.as_deref(), false),
        Proj::F32(_) => unreachable!("checked above: every projection is int8"),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, IndexOp, Module, Tensor};
    use candle_nn::VarBuilder;

    use crate::int8::Isa;
    use crate::m2m100::config::Config;
    use crate::m2m100::model::{EncoderLayer, M2M100Model, Precision};

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
