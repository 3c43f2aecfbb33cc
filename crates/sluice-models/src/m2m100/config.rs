//! `config.json` and `generation_config.json` of an M2M100 checkpoint, with Hugging Face field names
//! so `serde_json` reads the files as they are published.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Activation of the feed-forward blocks, named as in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0): what M2M100 checkpoints use.
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh-approximated GELU.
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// x * sigmoid(x).
    #[serde(alias = "swish")]
    Silu,
}

/// The architecture fields of `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Must be `m2m_100` when present.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Rows of the shared embedding (vocab.json + language tokens + made-up words).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Attention heads in the encoder.
    pub encoder_attention_heads: usize,
    /// Attention heads in the decoder.
    pub decoder_attention_heads: usize,
    /// Inner size of the encoder feed-forward blocks.
    pub encoder_ffn_dim: usize,
    /// Inner size of the decoder feed-forward blocks.
    pub decoder_ffn_dim: usize,
    /// Feed-forward activation.
    #[serde(default = "default_activation")]
    pub activation_function: Activation,
    /// Positions precomputed for the sinusoidal table (longer inputs extend it, as the reference does).
    pub max_position_embeddings: usize,
    /// Multiply token embeddings by sqrt(d_model).
    #[serde(default)]
    pub scale_embedding: bool,
    /// `<pad>` id; also the padding index of the position table.
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
    /// `<s>` id.
    #[serde(default)]
    pub bos_token_id: u32,
    /// `</s>` id.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// First token fed to the decoder.
    #[serde(default = "default_eos")]
    pub decoder_start_token_id: u32,
    /// Whether the output head shares the embedding matrix.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_activation() -> Activation {
    Activation::Relu
}
fn default_pad() -> u32 {
    1
}
fn default_eos() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
                path: path.to_owned(),
                reason: format!("not valid JSON: {e}"),
            })?;
        if let Some(found) = raw.get("model_type").and_then(|v| v.as_str()) {
            if found != "m2m_100" {
                return Err(ModelError::NotM2M100 {
                    path: path.to_owned(),
                    found: found.to_owned(),
                });
            }
        }
        let cfg: Config = serde_json::from_value(raw).map_err(|e| ModelError::InvalidFile {
            path: path.to_owned(),
            reason: format!("not an M2M100 config: {e}"),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| ModelError::InvalidFile {
            path: path.to_owned(),
            reason,
        };
        for (name, dim, heads) in [
            ("encoder", self.d_model, self.encoder_attention_heads),
            ("decoder", self.d_model, self.decoder_attention_heads),
        ] {
            if heads == 0 || dim % heads != 0 {
                return Err(bad(format!(
                    "d_model {dim} is not divisible by {name}_attention_heads {heads}"
                )));
            }
        }
        if self.d_model < 4 {
            return Err(bad(format!("d_model {} is too small", self.d_model)));
        }
        Ok(())
    }
}

/// How beam search decides that a sentence is finished (`early_stopping` in transformers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are finished (`true`).
    True,
    /// Stop when no running beam can beat the worst finished one, judged at the current length (`false`).
    #[default]
    Heuristic,
    /// As `Heuristic`, but judged at the longest possible length (`"never"`): the canonical search.
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Self::True),
            serde_json::Value::Bool(false) | serde_json::Value::Null => Ok(Self::Heuristic),
            serde_json::Value::String(s) if s == "never" => Ok(Self::Never),
            other => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", not {other}"
            ))),
        }
    }
}

impl std::str::FromStr for EarlyStopping {
    type Err = ModelError;
    fn from_str(s: &str) -> std::result::Result<Self, ModelError> {
        match s {
            "true" => Ok(Self::True),
            "false" => Ok(Self::Heuristic),
            "never" => Ok(Self::Never),
            _ => Err(ModelError::InvalidSettings(format!(
                "early stopping must be true, false or never, not {s:?}"
            ))),
        }
    }
}

/// One id or a list of ids, as `eos_token_id` may be written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// Whether a generation setting Sluice does not implement is set to a value that changes what
/// transformers generates (older `config.json` files write these fields with their neutral
/// values, which are accepted).
fn changes_output(field: &str, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    let neutral = match field {
        "do_sample" => Value::Bool(false),
        "num_beam_groups" => Value::from(1),
        "diversity_penalty" => Value::from(0.0),
        "repetition_penalty" | "encoder_repetition_penalty" => Value::from(1.0),
        "no_repeat_ngram_size" | "encoder_no_repeat_ngram_size" => Value::from(0),
        "bad_words_ids"
        | "suppress_tokens"
        | "begin_suppress_tokens"
        | "force_words_ids"
        | "sequence_bias"
        | "constraints"
        | "exponential_decay_length_penalty" => Value::Null,
        _ => return false,
    };
    let empty = matches!(value, Value::Null)
        || value.as_array().is_some_and(Vec::is_empty)
        || value.as_object().is_some_and(serde_json::Map::is_empty);
    !(empty
        || value == &neutral
        || value
            .as_f64()
            .zip(neutral.as_f64())
            .is_some_and(|(a, b)| a == b))
}

/// The generation fields of `generation_config.json` (or of `config.json` when that file is absent).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    /// Total decoder length, start token included.
    pub max_length: Option<usize>,
    /// New tokens after the start token; wins over `max_length`.
    pub max_new_tokens: Option<usize>,
    /// Minimum total decoder length before `</s>` may be chosen.
    pub min_length: Option<usize>,
    /// Minimum new tokens before `</s>` may be chosen; wins over `min_length`.
    pub min_new_tokens: Option<usize>,
    /// Beams; 1 means greedy.
    pub num_beams: Option<usize>,
    /// Exponent of the length normalisation of finished beams.
    pub length_penalty: Option<f64>,
    /// Beam stopping rule.
    pub early_stopping: Option<EarlyStopping>,
    /// Token forced at the first generated position (the target language).
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last position.
    pub forced_eos_token_id: Option<u32>,
    /// First decoder token.
    pub decoder_start_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

impl GenerationConfig {
    /// Reads the generation defaults of a model directory the way transformers does: from
    /// `generation_config.json` when present, else from the same keys in `config.json`.
    pub fn from_dir(config_json: &Path, generation_json: Option<&Path>) -> Result<Self> {
        let path = generation_json.unwrap_or(config_json);
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let invalid = |reason: String| ModelError::InvalidFile {
            path: path.to_owned(),
            reason,
        };
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("invalid generation settings: {e}")))?;
        if let Some((field, value)) = fields.iter().find(|(k, v)| changes_output(k, v)) {
            return Err(invalid(format!(
                "generation setting {field} = {value} is not supported: Sluice would translate \
                 differently from transformers (remove it to use the model's other settings)"
            )));
        }
        serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| invalid(format!("invalid generation settings: {e}")))
    }

    /// End-of-sequence ids (the config's `eos_token_id` when this file names none).
    pub fn eos_token_ids(&self, config: &Config) -> Vec<u32> {
        match &self.eos_token_id {
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) if !ids.is_empty() => ids.clone(),
            _ => vec![config.eos_token_id],
        }
    }
}
