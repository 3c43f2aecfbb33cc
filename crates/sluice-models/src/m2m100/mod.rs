//! M2M100 translation: load a checkpoint directory, tokenize, encode, generate, decode.

pub mod config;
pub mod generate;
pub mod languages;
pub mod model;
pub mod nllb;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

pub use config::{Config, EarlyStopping, GenerationConfig};
pub use generate::GenerateParams;
pub use model::{M2M100Model, Precision};
pub use nllb::NllbTokenizer;
pub use tokenizer::{M2M100Tokenizer, Tokenizer};

use crate::error::{ModelError, Result};
use crate::int8;
use crate::weights;

/// How a model's linear layers compute (`--compute-type`, `SLUICE_COMPUTE_TYPE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ComputeType {
    /// int8 on the CPU, float32 on a GPU.
    #[default]
    Auto,
    /// int8 weights (per output channel) and activations (per row), float32 scales.
    Int8,
    /// float32 throughout.
    Float32,
}

impl ComputeType {
    /// Every value, as written on the command line.
    pub const NAMES: [&'static str; 3] = ["auto", "int8", "float32"];

    /// The precision this compute type means on `device`.
    pub fn resolve(self, device: &Device) -> Result<Precision> {
        let cpu = device.is_cpu();
        match self {
            ComputeType::Float32 => Ok(Precision::Float32),
            ComputeType::Auto if !cpu => Ok(Precision::Float32),
            ComputeType::Int8 if !cpu => Err(ModelError::InvalidSettings(
                "compute type int8 runs on the CPU only; use float32 (or auto) on a GPU".into(),
            )),
            ComputeType::Auto | ComputeType::Int8 => int8::selected_isa()
                .map(Precision::Int8)
                .map_err(|e| ModelError::InvalidSettings(e.to_string())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ComputeType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for ComputeType {
    type Err = ModelError;

    fn from_str(s: &str) -> std::result::Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "default" => Ok(ComputeType::Auto),
            "int8" | "int8_float32" => Ok(ComputeType::Int8),
            "float32" | "f32" | "fp32" => Ok(ComputeType::Float32),
            other => Err(ModelError::InvalidSettings(format!(
                "unknown compute type {other:?}: expected one of {}",
                ComputeType::NAMES.join(", ")
            ))),
        }
    }
}

impl std::fmt::Display for ComputeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComputeType::Auto => "auto",
            ComputeType::Int8 => "int8",
            ComputeType::Float32 => "float32",
        })
    }
}

/// Per-call overrides of the model's generation defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOptions {
    /// Beams (1 = greedy).
    pub num_beams: Option<usize>,
    /// Upper bound on generated tokens (language token and `</s>` included).
    pub max_new_tokens: Option<usize>,
    /// Lower bound on generated tokens before `</s>` may end the sentence.
    pub min_new_tokens: Option<usize>,
    /// Length normalisation exponent for beam search.
    pub length_penalty: Option<f64>,
    /// Beam stopping rule.
    pub early_stopping: Option<EarlyStopping>,
}

/// One translation call: texts from one language into another, with per-call overrides of the
/// generation defaults, `batch_size` sentences generated together.
#[derive(Debug, Clone)]
pub struct TranslateTexts<'a, S> {
    /// The texts; results come back in this order.
    pub texts: &'a [S],
    /// Source language code.
    pub from: &'a str,
    /// Target language code.
    pub to: &'a str,
    /// Overrides of the model's generation defaults.
    pub options: GenerationOptions,
    /// Sentences generated together.
    pub batch_size: usize,
}

impl<'a, S: AsRef<str>> TranslateTexts<'a, S> {
    /// `texts` from `from` into `to` with the model's defaults, 16 sentences at a time.
    pub fn new(texts: &'a [S], from: &'a str, to: &'a str) -> Self {
        Self {
            texts,
            from,
            to,
            options: GenerationOptions::default(),
            batch_size: 16,
        }
    }

    /// With these generation overrides.
    pub fn options(mut self, options: GenerationOptions) -> Self {
        self.options = options;
        self
    }

    /// With `batch_size` sentences generated together.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
}

/// A loaded M2M100 model with its tokenizer and generation defaults.
#[derive(Debug)]
pub struct M2M100 {
    config: Config,
    generation: GenerationConfig,
    tokenizer: Tokenizer,
    model: M2M100Model,
    precision: Precision,
    dir: PathBuf,
}

fn required(dir: &Path, file: &str) -> Result<PathBuf> {
    let p = dir.join(file);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ModelError::MissingFile {
            dir: dir.to_owned(),
            file: file.to_owned(),
            hint: "an M2M100 or NLLB-200 directory in the Hugging Face layout holds config.json, \
                   vocab.json and sentencepiece.bpe.model (NLLB-200: tokenizer.json), \
                   and model.safetensors or pytorch_model.bin \
                   (`sluice fetch-model facebook/m2m100_418M --to DIR` writes one)"
                .to_owned(),
        })
    }
}

fn optional(dir: &Path, file: &str) -> Option<PathBuf> {
    Some(dir.join(file)).filter(|p| p.is_file())
}

/// The directory's tokenizer: NLLB-200's when `tokenizer_config.json` names an NLLB tokenizer or
/// the directory has `tokenizer.json` but no `vocab.json` (NLLB checkpoints on the hub), else
/// M2M100's.
fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    // Read once: it picks the family and configures either tokenizer.
    let config_path = optional(dir, "tokenizer_config.json");
    let config = tokenizer::TokenizerConfig::read(config_path.as_deref())?;
    let nllb = match config.tokenizer_class.as_deref() {
        Some(c) => c.starts_with("Nllb"),
        None => optional(dir, "vocab.json").is_none() && optional(dir, "tokenizer.json").is_some(),
    };
    Ok(if nllb {
        Tokenizer::Nllb(Box::new(NllbTokenizer::new(
            &required(dir, "tokenizer.json")?,
            config,
        )?))
    } else {
        Tokenizer::M2M100(Box::new(M2M100Tokenizer::with_config(
            &required(dir, "vocab.json")?,
            &required(dir, "sentencepiece.bpe.model")?,
            config,
            config_path.as_deref(),
        )?))
    })
}

impl M2M100 {
    /// Loads a model directory in the Hugging Face layout onto `device`; int8 weights are
    /// quantised from the checkpoint tensor by tensor.
    pub fn load(dir: &Path, device: &Device, compute: ComputeType) -> Result<Self> {
        Self::load_precision(dir, device, compute.resolve(device)?)
    }

    /// Loads a model directory with an explicit precision (and int8 kernel).
    pub fn load_precision(dir: &Path, device: &Device, precision: Precision) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::NoSuchDirectory(dir.to_owned()));
        }
        let config_path = required(dir, "config.json")?;
        let config = Config::from_file(&config_path)?;
        let generation = GenerationConfig::from_dir(
            &config_path,
            optional(dir, "generation_config.json").as_deref(),
        )?;
        let tokenizer = load_tokenizer(dir)?;
        let needed = tokenizer.len();
        if needed > config.vocab_size {
            return Err(ModelError::InvalidFile {
                path: config_path,
                reason: format!(
                    "vocab_size {} is smaller than the tokenizer's vocabulary with its language \
                     tokens ({needed})",
                    config.vocab_size
                ),
            });
        }
        let files = weights::weight_files(dir)?;
        let vb = files.var_builder(DType::F32, device)?;
        let model = M2M100Model::new(&config, vb, precision)?;
        tracing::info!(dir = %dir.display(), precision = ?precision, "loaded M2M100 model");
        Ok(Self {
            config,
            generation,
            tokenizer,
            model,
            precision,
            dir: dir.to_owned(),
        })
    }

    /// How the linear layers compute.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The architecture config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The generation defaults read from the directory.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The network.
    pub fn model(&self) -> &M2M100Model {
        &self.model
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decoding settings for a target language: the call's options over the model's defaults,
    /// resolved as transformers' `generate` resolves them.
    pub fn params(&self, tgt_lang_id: u32, opts: &GenerationOptions) -> GenerateParams {
        let g = &self.generation;
        let max_length = match opts.max_new_tokens.or(g.max_new_tokens) {
            Some(n) => n + 1,
            None => g
                .max_length
                .unwrap_or_else(|| (20 + 1).min(self.config.max_position_embeddings)),
        };
        let min_length = match opts.min_new_tokens.or(g.min_new_tokens) {
            Some(n) => n + 1,
            None => g.min_length.unwrap_or(0),
        };
        GenerateParams {
            num_beams: opts.num_beams.or(g.num_beams).unwrap_or(1),
            max_length,
            min_length,
            length_penalty: opts.length_penalty.or(g.length_penalty).unwrap_or(1.0),
            early_stopping: opts.early_stopping.or(g.early_stopping).unwrap_or_default(),
            forced_bos: Some(tgt_lang_id),
            forced_eos: g.forced_eos_token_id,
            decoder_start: g
                .decoder_start_token_id
                .unwrap_or(self.config.decoder_start_token_id),
            eos: g.eos_token_ids(&self.config),
        }
    }

    /// Generated ids (decoder start first) for already tokenized sentences, as one batch.
    pub fn generate_ids(
        &self,
        batch: &[Vec<u32>],
        params: &GenerateParams,
    ) -> Result<Vec<Vec<u32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // On a pool worker, so the serial parts between parallel products run on a thread
        // that takes part in those products, with the other workers kept awake between them.
        crate::pool::run_hot(|| {
            let enc = self.model.encode(batch)?;
            generate::generate(&self.model, &enc, params)
        })
    }

    /// Generated ids for each sentence of `batch` under the failure policy every translation
    /// path shares (the server's batcher, the `translate` stage, the `model` stage): the batch is
    /// generated together, and when that fails each sentence is generated alone, so a sentence
    /// the model cannot take fails alone and the rest of its batch still gets translated.
    pub fn generate_each(
        &self,
        batch: &[Vec<u32>],
        params: &GenerateParams,
    ) -> Vec<Result<Vec<u32>>> {
        match self.generate_ids(batch, params) {
            Ok(all) => all.into_iter().map(Ok).collect(),
            Err(e) if batch.len() <= 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, sentences = batch.len(), "batch failed; generating its sentences one by one");
                batch
                    .iter()
                    .map(|one| {
                        let mut ids = self.generate_ids(std::slice::from_ref(one), params)?;
                        Ok(ids.pop().unwrap_or_default())
                    })
                    .collect()
            }
        }
    }

    /// As [`M2M100::translate`], with one result per text under [`M2M100::generate_each`]'s
    /// policy: a text that cannot be tokenized, generated or decoded fails alone. Only what
    /// affects every text (an unknown language) fails the call.
    pub fn translate_each<S: AsRef<str>>(
        &self,
        request: &TranslateTexts<'_, S>,
    ) -> Result<Vec<Result<String>>> {
        Ok(self
            .generate_texts(request)?
            .into_iter()
            .map(|ids| match ids {
                Ok(ids) if ids.is_empty() => Ok(String::new()),
                Ok(ids) => self.tokenizer.decode(&ids),
                Err(e) => Err(e),
            })
            .collect())
    }

    /// Translates texts from one language to another, `batch_size` sentences at a time.
    ///
    /// Sentences are grouped by token length to limit padding; results come back in input order.
    /// Empty texts translate to empty texts without running the model.
    pub fn translate<S: AsRef<str>>(&self, request: &TranslateTexts<'_, S>) -> Result<Vec<String>> {
        self.translate_each(request)?.into_iter().collect()
    }

    /// As [`M2M100::translate`], returning the generated ids (decoder start first; empty for
    /// an empty text).
    pub fn translate_ids<S: AsRef<str>>(
        &self,
        request: &TranslateTexts<'_, S>,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_texts(request)?.into_iter().collect()
    }

    /// Generated ids per text (empty for an empty text), in input order: texts tokenized,
    /// grouped by token length to limit padding, `batch_size` at a time, each group under
    /// [`M2M100::generate_each`]'s policy.
    fn generate_texts<S: AsRef<str>>(
        &self,
        request: &TranslateTexts<'_, S>,
    ) -> Result<Vec<Result<Vec<u32>>>> {
        let TranslateTexts {
            texts,
            from,
            to,
            options,
            batch_size,
        } = request;
        let src = self.tokenizer.lang_id(from)?;
        let tgt = self.tokenizer.lang_id(to)?;
        let params = self.params(tgt, options);
        let mut out: Vec<Result<Vec<u32>>> = Vec::with_capacity(texts.len());
        let mut encoded = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let t = t.as_ref();
            out.push(Ok(Vec::new()));
            if t.is_empty() {
                continue;
            }
            match self.tokenizer.encode(t, src) {
                Ok(ids) => encoded.push((i, ids)),
                Err(e) => out[i] = Err(e),
            }
        }
        for (i, ids) in self.generate_by_length(encoded, &params, *batch_size) {
            out[i] = ids;
        }
        Ok(out)
    }

    /// Generated ids for encoded sources, each with its position: grouped by token length to
    /// limit padding, `batch_size` at a time, each group under [`M2M100::generate_each`]'s
    /// policy. Every translation call that has its sources encoded goes through here.
    pub fn generate_by_length(
        &self,
        mut encoded: Vec<(usize, Vec<u32>)>,
        params: &GenerateParams,
        batch_size: usize,
    ) -> Vec<(usize, Result<Vec<u32>>)> {
        encoded.sort_by_key(|(_, ids)| ids.len());
        let (at, sources): (Vec<usize>, Vec<Vec<u32>>) = encoded.into_iter().unzip();
        let size = batch_size.max(1);
        at.chunks(size)
            .zip(sources.chunks(size))
            .flat_map(|(at, batch)| at.iter().copied().zip(self.generate_each(batch, params)))
            .collect()
    }
}
