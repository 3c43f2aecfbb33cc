//! The M2M100 model behind `POST /translation`: request validation and tokenization before
//! admission, and the batch backend run on the compute threads.

use std::num::NonZeroUsize;
use std::sync::Arc;

use sluice_models::m2m100::GenerationOptions;
use sluice_models::{ModelError, M2M100};

use crate::api::Payload;
use crate::batcher::{Backend, BackendError};
use crate::error::ApiError;

/// Server-side bounds on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most records in one request.
    pub max_records: usize,
    /// Most source tokens in one record; `None` uses the model's `max_position_embeddings`.
    pub max_input_tokens: Option<usize>,
    /// Most beams a request may ask for.
    pub max_beams: NonZeroUsize,
    /// Most new tokens a request may ask for; also caps the model's default.
    pub max_new_tokens: NonZeroUsize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_records: 512,
            max_input_tokens: None,
            max_beams: NonZeroUsize::new(8).expect("non-zero"),
            max_new_tokens: NonZeroUsize::new(512).expect("non-zero"),
        }
    }
}

/// The settings records must share to be decoded in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslateKey {
    /// Target language token (forced first).
    pub tgt: u32,
    /// Beams.
    pub beams: usize,
    /// Most generated tokens.
    pub max_new_tokens: usize,
}

/// A translated record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Translation {
    /// The text.
    pub text: String,
    /// Tokens the decoder produced for it.
    pub tokens: usize,
}

/// A request checked and tokenized, ready for admission.
#[derive(Debug)]
pub struct PreparedTranslation {
    /// The records' ids, in request order.
    pub ids: Vec<String>,
    /// Encoded source per record; `None` for empty text, which is answered without the model.
    pub items: Vec<Option<Vec<u32>>>,
    /// Batch key shared by all the records.
    pub key: TranslateKey,
}

/// Runs M2M100 batches.
pub struct Translator {
    model: Arc<M2M100>,
}

impl Translator {
    /// Wraps a loaded model.
    pub fn new(model: Arc<M2M100>) -> Self {
        Self { model }
    }

    /// The model.
    pub fn model(&self) -> &M2M100 {
        &self.model
    }

    /// Most source tokens accepted per record.
    pub fn max_input_tokens(&self, limits: &Limits) -> usize {
        limits
            .max_input_tokens
            .unwrap_or(self.model.config().max_position_embeddings)
    }

    /// Checks languages, settings and lengths, and tokenizes every record.
    pub fn prepare(
        &self,
        limits: &Limits,
        payload: Payload,
    ) -> Result<PreparedTranslation, ApiError> {
        let tok = self.model.tokenizer();
        let lang = |field: &'static str, code: &str| {
            tok.lang_id(code).map_err(|e| match e {
                ModelError::UnknownLanguage { suggestion, .. } => ApiError::UnknownLanguage {
                    field,
                    code: code.to_owned(),
                    suggestion,
                    valid: tok.languages().iter().map(|l| l.to_string()).collect(),
                },
                other => ApiError::internal(other),
            })
        };
        let src = lang("fromLang", &payload.from_lang)?;
        let tgt = lang("toLang", &payload.to_lang)?;
        let key = self.key(limits, tgt, payload.beams, payload.max_new_tokens)?;
        let max_tokens = self.max_input_tokens(limits);
        let mut ids = Vec::with_capacity(payload.records.len());
        let mut items = Vec::with_capacity(payload.records.len());
        for (i, r) in payload.records.into_iter().enumerate() {
            if r.text.is_empty() {
                items.push(None);
            } else {
                let enc = tok.encode(&r.text, src).map_err(ApiError::internal)?;
                if enc.len() > max_tokens {
                    return Err(ApiError::TextTooLong {
                        index: i,
                        id: r.id.clone(),
                        tokens: enc.len(),
                        max: max_tokens,
                    });
                }
                items.push(Some(enc));
            }
            ids.push(r.id);
        }
        Ok(PreparedTranslation { ids, items, key })
    }

    /// Resolves generation settings against the model's defaults and the server's maxima.
    fn key(
        &self,
        limits: &Limits,
        tgt: u32,
        beams: Option<usize>,
        max_new_tokens: Option<usize>,
    ) -> Result<TranslateKey, ApiError> {
        let out_of_range = |field: &'static str, value: usize, max: usize| {
            ApiError::ParameterOutOfRange { field, value, max }
        };
        let (max_beams, max_new) = (limits.max_beams.get(), limits.max_new_tokens.get());
        if let Some(b) = beams.filter(|&b| b == 0 || b > max_beams) {
            return Err(out_of_range("beams", b, max_beams));
        }
        if let Some(n) = max_new_tokens.filter(|&n| n == 0 || n > max_new) {
            return Err(out_of_range("maxNewTokens", n, max_new));
        }
        let defaults = self.model.params(tgt, &GenerationOptions::default());
        Ok(TranslateKey {
            tgt,
            beams: beams.unwrap_or(defaults.num_beams.min(max_beams)),
            max_new_tokens: max_new_tokens
                .unwrap_or(defaults.max_length.saturating_sub(1).clamp(1, max_new)),
        })
    }

    /// Translates one short sentence so the first request does not pay for page faults.
    pub fn warm_up(&self) -> Result<(), ModelError> {
        let tok = self.model.tokenizer();
        let (en, fr) = (tok.lang_id("en")?, tok.lang_id("fr")?);
        let key = TranslateKey {
            tgt: fr,
            beams: 1,
            max_new_tokens: 4,
        };
        let input = tok.encode("Hello, world.", en)?;
        let failed = |e: BackendError| ModelError::InvalidSettings(e.to_string());
        for translated in self.run(&key, vec![input]).map_err(failed)? {
            translated.map_err(failed)?;
        }
        Ok(())
    }
}

impl Backend for Translator {
    type Input = Vec<u32>;
    type Key = TranslateKey;
    type Output = Translation;

    /// Under the translation service's failure policy ([`M2M100::generate_each`]): a record
    /// the model cannot take fails alone; the rest of the batch is answered.
    fn run(
        &self,
        key: &TranslateKey,
        inputs: Vec<Vec<u32>>,
    ) -> Result<Vec<Result<Translation, BackendError>>, BackendError> {
        let opts = GenerationOptions {
            num_beams: Some(key.beams),
            max_new_tokens: Some(key.max_new_tokens),
            ..GenerationOptions::default()
        };
        let params = self.model.params(key.tgt, &opts);
        let translate = |ids: Vec<u32>| {
            let text = self.model.tokenizer().decode(&ids)?;
            Ok(Translation {
                text,
                tokens: ids.len().saturating_sub(1),
            })
        };
        Ok(self
            .model
            .generate_each(&inputs, &params)
            .into_iter()
            .map(|ids| ids.and_then(translate).map_err(BackendError::from))
            .collect())
    }

    fn output_units(&self, output: &Translation) -> usize {
        output.tokens
    }
}
