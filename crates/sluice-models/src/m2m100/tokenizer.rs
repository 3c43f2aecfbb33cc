//! The M2M100 tokenizer, token for token as transformers' `M2M100Tokenizer`.
//!
//! Hand-written on top of the `sentencepiece` crate because no crate implements this tokenizer:
//! the SentencePiece model only segments text; ids come from `vocab.json`, language tokens are
//! appended after the vocabulary, and special-token strings in the input are matched before
//! segmentation. Each of those rules changes ids, so each is reproduced here and tested for parity.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use sentencepiece::SentencePieceProcessor;
use serde::Deserialize;

use super::languages::{M2M100_LANGUAGES, WMT21_LANGUAGES};
use super::nllb::NllbTokenizer;
use crate::error::{ModelError, Result};

/// A special token as `tokenizer_config.json` writes it: a string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            TokenSpec::Plain(s) => s,
            TokenSpec::Added { content } => content,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenizerConfig {
    /// `NllbTokenizer` / `NllbTokenizerFast` for NLLB-200 checkpoints.
    pub(super) tokenizer_class: Option<String>,
    /// NLLB's old input layout, `pieces </s> src_lang`, when true.
    #[serde(default)]
    pub(super) legacy_behaviour: bool,
    language_codes: Option<String>,
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
    sep_token: Option<TokenSpec>,
    pad_token: Option<TokenSpec>,
    unk_token: Option<TokenSpec>,
    #[serde(default)]
    pub(super) clean_up_tokenization_spaces: bool,
}

impl TokenizerConfig {
    /// `tokenizer_config.json` when the directory has one, else the defaults.
    pub(super) fn read(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?;
                serde_json::from_str(&t).map_err(|e| ModelError::InvalidFile {
                    path: p.to_owned(),
                    reason: format!("not valid JSON: {e}"),
                })
            }
            None => Ok(TokenizerConfig::default()),
        }
    }

    /// The language codes `language_codes` names; `path` (the file read) is for the error.
    fn languages(&self, path: Option<&Path>) -> Result<&'static [&'static str]> {
        let languages: &'static [&'static str] = match self.language_codes.as_deref() {
            None | Some("m2m100") => &M2M100_LANGUAGES,
            Some("wmt21") => &WMT21_LANGUAGES,
            Some(other) => {
                return Err(ModelError::InvalidFile {
                    path: path.map(Path::to_owned).unwrap_or_default(),
                    reason: format!("language_codes {other:?} is not m2m100 or wmt21"),
                })
            }
        };
        Ok(languages)
    }

    /// The special tokens' strings, `[bos, eos, sep, pad, unk]`, transformers' defaults where
    /// the file names none.
    pub(super) fn special_names(&self) -> [String; 5] {
        let name = |spec: &Option<TokenSpec>, default: &str| {
            spec.as_ref()
                .map(|s| s.content().to_owned())
                .unwrap_or_else(|| default.to_owned())
        };
        [
            name(&self.bos_token, "<s>"),
            name(&self.eos_token, "</s>"),
            name(&self.sep_token, "</s>"),
            name(&self.pad_token, "<pad>"),
            name(&self.unk_token, "<unk>"),
        ]
    }
}

/// `vocab.json`: piece -> id.
fn read_vocab(path: &Path) -> Result<HashMap<String, u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
        path: path.to_owned(),
        reason: format!("expected a JSON object of piece -> id: {e}"),
    })
}

/// A checkpoint's tokenizer: M2M100's (`vocab.json` and a SentencePiece model) or NLLB-200's
/// (`tokenizer.json`). Both lay an input out as `[src_lang] pieces [</s>]`.
#[derive(Debug)]
pub enum Tokenizer {
    /// M2M100: `__en__` language tokens after `vocab.json`.
    M2M100(Box<M2M100Tokenizer>),
    /// NLLB-200: `eng_Latn` language tokens in `tokenizer.json`.
    Nllb(Box<NllbTokenizer>),
}

impl Tokenizer {
    /// The language codes this tokenizer knows, in id order.
    pub fn languages(&self) -> &'static [&'static str] {
        match self {
            Tokenizer::M2M100(t) => t.languages(),
            Tokenizer::Nllb(t) => t.languages(),
        }
    }

    /// Other codes accepted for a language, each with the code it stands for (NLLB-200's ISO
    /// 639-1 codes; none for M2M100).
    pub fn aliases(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Tokenizer::M2M100(_) => &[],
            Tokenizer::Nllb(_) => &super::languages::ISO_TO_NLLB,
        }
    }

    /// Id of the language token for `code`, or an error naming the code and the valid ones.
    pub fn lang_id(&self, code: &str) -> Result<u32> {
        match self {
            Tokenizer::M2M100(t) => t.lang_id(code),
            Tokenizer::Nllb(t) => t.lang_id(code),
        }
    }

    /// Ids this tokenizer can produce (the model's embedding must have as many rows).
    pub fn len(&self) -> usize {
        match self {
            Tokenizer::M2M100(t) => t.vocab_len() + t.languages().len(),
            Tokenizer::Nllb(t) => t.len(),
        }
    }

    /// Whether the tokenizer has no ids at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoder input for `text` in the language `src_lang_id`.
    pub fn encode(&self, text: &str, src_lang_id: u32) -> Result<Vec<u32>> {
        match self {
            Tokenizer::M2M100(t) => t.encode(text, src_lang_id),
            Tokenizer::Nllb(t) => t.encode(text, src_lang_id),
        }
    }

    /// Text of generated ids, special tokens dropped, as the reference decodes them.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::M2M100(t) => t.decode(ids),
            Tokenizer::Nllb(t) => t.decode(ids),
        }
    }
}

/// SentencePiece segmentation + `vocab.json` ids + language tokens.
pub struct M2M100Tokenizer {
    sp: SentencePieceProcessor,
    vocab: HashMap<String, u32>,
    id_to_piece: HashMap<u32, String>,
    languages: &'static [&'static str],
    lang_base: u32,
    unk_id: u32,
    eos_id: u32,
    unk_token: String,
    /// Special-token strings matched in input text, with their ids, longest first.
    specials_by_len: Vec<(String, u32)>,
    special_ids: HashSet<u32>,
    special_tokens: HashSet<String>,
    clean_up_spaces: bool,
}

impl std::fmt::Debug for M2M100Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("M2M100Tokenizer")
            .field("vocab", &self.vocab.len())
            .field("languages", &self.languages.len())
            .finish()
    }
}

impl M2M100Tokenizer {
    /// Loads `vocab.json`, `sentencepiece.bpe.model` and (if present) `tokenizer_config.json`.
    pub fn from_files(vocab: &Path, spm: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        Self::with_config(
            vocab,
            spm,
            TokenizerConfig::read(tokenizer_config)?,
            tokenizer_config,
        )
    }

    /// As [`M2M100Tokenizer::from_files`], with `tokenizer_config.json` already read (`cfg`, from
    /// `tokenizer_config`, which errors name).
    pub(super) fn with_config(
        vocab: &Path,
        spm: &Path,
        cfg: TokenizerConfig,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self> {
        let vocab_map = read_vocab(vocab)?;
        let sp = SentencePieceProcessor::open(spm).map_err(|e| ModelError::InvalidFile {
            path: spm.to_owned(),
            reason: format!("not a SentencePiece model: {e}"),
        })?;
        let languages = cfg.languages(tokenizer_config)?;
        let [bos, eos, sep, pad, unk] = cfg.special_names();
        let lookup = |tok: &str| {
            vocab_map
                .get(tok)
                .copied()
                .ok_or_else(|| ModelError::InvalidFile {
                    path: vocab.to_owned(),
                    reason: format!("special token {tok:?} is not in the vocabulary"),
                })
        };
        let unk_id = lookup(&unk)?;
        let eos_id = lookup(&eos)?;
        let lang_base = u32::try_from(vocab_map.len()).map_err(|_| ModelError::InvalidFile {
            path: vocab.to_owned(),
            reason: "vocabulary too large".into(),
        })?;

        let mut specials: Vec<(String, u32)> = Vec::new();
        for tok in [&bos, &eos, &sep, &pad, &unk] {
            let id = lookup(tok)?;
            if !specials.iter().any(|(t, _)| t == tok) {
                specials.push((tok.clone(), id));
            }
        }
        for (i, code) in languages.iter().enumerate() {
            specials.push((format!("__{code}__"), lang_base + i as u32));
        }
        let special_ids = specials.iter().map(|(_, id)| *id).collect();
        let special_tokens = specials.iter().map(|(t, _)| t.clone()).collect();
        specials.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let id_to_piece = vocab_map.iter().map(|(p, id)| (*id, p.clone())).collect();
        Ok(Self {
            sp,
            vocab: vocab_map,
            id_to_piece,
            languages,
            lang_base,
            unk_id,
            eos_id,
            unk_token: unk,
            specials_by_len: specials,
            special_ids,
            special_tokens,
            clean_up_spaces: cfg.clean_up_tokenization_spaces,
        })
    }

    /// The language codes this tokenizer knows, in id order.
    pub fn languages(&self) -> &'static [&'static str] {
        self.languages
    }

    /// Id of the `__code__` token, or an error naming the code and the valid ones.
    pub fn lang_id(&self, code: &str) -> Result<u32> {
        match self.languages.iter().position(|c| *c == code) {
            Some(i) => Ok(self.lang_base + i as u32),
            None => Err(ModelError::UnknownLanguage {
                code: code.to_owned(),
                suggestion: super::languages::suggest(code, self.languages).map(str::to_owned),
                known: self.languages.to_vec(),
            }),
        }
    }

    /// Size of `vocab.json` (language tokens start here).
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// Encoder input for `text` in the language `src_lang_id`: `[__src__] + pieces + [</s>]`.
    pub fn encode(&self, text: &str, src_lang_id: u32) -> Result<Vec<u32>> {
        let mut ids = vec![src_lang_id];
        for segment in self.split_on_specials(text) {
            match segment {
                Segment::Special(id) => ids.push(id),
                Segment::Text(t) => {
                    let pieces = self
                        .sp
                        .encode(t)
                        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
                    ids.extend(
                        pieces
                            .iter()
                            .map(|p| self.vocab.get(&p.piece).copied().unwrap_or(self.unk_id)),
                    );
                }
            }
        }
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Text of generated ids, dropping special ids (`<s>`, `<pad>`, `</s>`, `<unk>`, languages)
    /// wherever they are, as `decode(ids, skip_special_tokens=True)` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        let mut pieces: Vec<&str> = Vec::new();
        for id in ids.iter().filter(|id| !self.special_ids.contains(id)) {
            // Ids with no piece (the made-up words after the languages) read as the unknown token,
            // and a special-token string is emitted verbatim: both as in the reference.
            let tok = self
                .id_to_piece
                .get(id)
                .map(String::as_str)
                .unwrap_or(&self.unk_token);
            if self.special_tokens.contains(tok) {
                out.push_str(&self.decode_pieces(&pieces)?);
                out.push_str(tok);
                pieces.clear();
            } else {
                pieces.push(tok);
            }
        }
        out.push_str(&self.decode_pieces(&pieces)?);
        let out = python_strip(&out);
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(out)
        } else {
            out.to_owned()
        })
    }

    fn decode_pieces(&self, pieces: &[&str]) -> Result<String> {
        if pieces.is_empty() {
            return Ok(String::new());
        }
        self.sp
            .decode_pieces(pieces)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Splits text on special-token strings, leftmost-longest, as transformers' added-token trie.
    fn split_on_specials<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let hit = if rest.starts_with('<') || rest.starts_with("__") {
                self.specials_by_len
                    .iter()
                    .find(|(t, _)| rest.starts_with(t.as_str()))
            } else {
                None
            };
            match hit {
                Some((tok, id)) => {
                    if start < i {
                        out.push(Segment::Text(&text[start..i]));
                    }
                    out.push(Segment::Special(*id));
                    i += tok.len();
                    start = i;
                }
                None => i += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        if start < text.len() {
            out.push(Segment::Text(&text[start..]));
        }
        out
    }
}

enum Segment<'a> {
    Text(&'a str),
    Special(u32),
}

/// `str.strip()` of Python: its whitespace set adds the ASCII separators U+001C..U+001F to Rust's.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// transformers' `clean_up_tokenization`, applied when tokenizer_config.json asks for it.
pub(super) fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strip_matches_str_strip() {
        assert_eq!(python_strip("\u{1f} a b\u{3000}\n"), "a b");
        assert_eq!(python_strip("\u{200b}x"), "\u{200b}x");
    }

    #[test]
    fn clean_up_joins_punctuation() {
        assert_eq!(
            clean_up_tokenization("I do n't know , ok ?"),
            "I don't know, ok?"
        );
    }
}
