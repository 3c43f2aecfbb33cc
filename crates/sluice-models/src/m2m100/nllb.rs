//! The NLLB-200 tokenizer: the checkpoint's `tokenizer.json` run by the `tokenizers` crate (the
//! library behind transformers' own NLLB tokenizer, so segmentation, special-token matching and
//! decoding are the reference's), with NLLB's input layout and its language codes, which can also
//! be named by the ISO 639-1 codes of the `/translation` contract (`en` for `eng_Latn`).

use std::path::Path;

use super::languages::{self, NLLB_LANGUAGES};
use super::tokenizer::{clean_up_tokenization, TokenizerConfig};
use crate::error::{ModelError, Result};

/// `tokenizer.json` plus NLLB's layout: `[src_lang] pieces [</s>]` (or `pieces [</s>] [src_lang]`
/// for checkpoints that set `legacy_behaviour`).
pub struct NllbTokenizer {
    inner: tokenizers::Tokenizer,
    /// Token id of each code of [`NLLB_LANGUAGES`], in that order.
    language_ids: Vec<u32>,
    eos_id: u32,
    legacy: bool,
    clean_up_spaces: bool,
}

impl std::fmt::Debug for NllbTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NllbTokenizer")
            .field("vocab", &self.len())
            .field("languages", &self.language_ids.len())
            .finish()
    }
}

impl NllbTokenizer {
    /// Loads `tokenizer.json`, with the directory's `tokenizer_config.json` already read (`cfg`).
    pub(super) fn new(tokenizer_json: &Path, cfg: TokenizerConfig) -> Result<Self> {
        let invalid = |reason: String| ModelError::InvalidFile {
            path: tokenizer_json.to_owned(),
            reason,
        };
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| invalid(format!("not a tokenizers file: {e}")))?;
        let [_, eos, ..] = cfg.special_names();
        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| invalid(format!("token {tok:?} is not in the vocabulary")))
        };
        let eos_id = id(&eos)?;
        let language_ids = NLLB_LANGUAGES
            .iter()
            .map(|c| id(c))
            .collect::<Result<_>>()?;
        Ok(Self {
            inner,
            language_ids,
            eos_id,
            legacy: cfg.legacy_behaviour,
            clean_up_spaces: cfg.clean_up_tokenization_spaces,
        })
    }

    /// NLLB-200's language codes.
    pub fn languages(&self) -> &'static [&'static str] {
        &NLLB_LANGUAGES
    }

    /// Id of the language token for an NLLB code or the ISO 639-1 code of one.
    pub fn lang_id(&self, code: &str) -> Result<u32> {
        let position =
            languages::nllb_code(code).and_then(|c| NLLB_LANGUAGES.iter().position(|k| *k == c));
        match position {
            Some(i) => Ok(self.language_ids[i]),
            None => Err(ModelError::UnknownLanguage {
                code: code.to_owned(),
                suggestion: languages::suggest_nllb(code).map(str::to_owned),
                known: NLLB_LANGUAGES.to_vec(),
            }),
        }
    }

    /// Ids this tokenizer can produce, added tokens included.
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the tokenizer has no ids at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoder input for `text` in the language `src_lang_id`.
    pub fn encode(&self, text: &str, src_lang_id: u32) -> Result<Vec<u32>> {
        let pieces = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(pieces.len() + 2);
        if !self.legacy {
            ids.push(src_lang_id);
        }
        ids.extend_from_slice(pieces.get_ids());
        ids.push(self.eos_id);
        if self.legacy {
            ids.push(src_lang_id);
        }
        Ok(ids)
    }

    /// Text of generated ids with special tokens dropped, as `decode(ids,
    /// skip_special_tokens=True)` gives it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }
}
