//! The translation kind: an M2M100 model behind the service interface, and the one
//! translation-parameters type every path reads (`POST /translation`'s payload, `/v1`
//! parameters, the v2 protocol's, the `translate` and `model` stages' TOML, `sluice
//! translate`'s flags), checked the same way everywhere: languages the model knows, beams and
//! new tokens within the limits, source texts within the token limit.

use std::num::NonZeroUsize;
use std::path::Path;

use serde_json::{json, Value};

use super::{
    element_text, tensor_inputs, Batch, Content, Description, InferInput, InferOutput, InputKind,
    InputProblem, Kind, LoadContext, Model, ModelService, NamedTensor, Parameters, ServiceError,
    Tensor, TensorInfo, Work,
};
use crate::m2m100::{EarlyStopping, GenerationOptions, M2M100};
use crate::ModelError;

/// The kind's name in `GET /v1/models`.
pub const KIND_NAME: &str = "translation";

/// How the service registry recognises and loads translation models.
pub const KIND: Kind = Kind {
    name: KIND_NAME,
    // Any directory that is no other kind: its files are checked as M2M100's at load.
    detect: |_| true,
    load: |dir, context| {
        TranslationService::load(dir, context).map(|t| Model::Translation(std::sync::Arc::new(t)))
    },
};

/// Bounds on what one translation request may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslationLimits {
    /// Most source tokens in one text; `None` uses the model's `max_position_embeddings`.
    pub max_input_tokens: Option<usize>,
    /// Most beams a request may ask for.
    pub max_beams: NonZeroUsize,
    /// Most new tokens a request may ask for; also caps the model's default.
    pub max_new_tokens: NonZeroUsize,
}

impl TranslationLimits {
    /// No bound but what the model itself refuses (a zero beam count, say): for in-process
    /// callers, where nobody else shares the model.
    pub fn none() -> Self {
        Self {
            max_input_tokens: Some(usize::MAX),
            max_beams: NonZeroUsize::MAX,
            max_new_tokens: NonZeroUsize::MAX,
        }
    }
}

impl Default for TranslationLimits {
    /// The server's defaults: texts up to the model's positions, 8 beams, 512 new tokens.
    fn default() -> Self {
        Self {
            max_input_tokens: None,
            max_beams: NonZeroUsize::new(8).expect("non-zero"),
            max_new_tokens: NonZeroUsize::new(512).expect("non-zero"),
        }
    }
}

/// Who is asking, which decides how parameters are spelled (and named in messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `POST /translation`: `payload.fromLang`, `payload.toLang`, `payload.beams`,
    /// `payload.maxNewTokens`.
    Payload,
    /// `/v1` `parameters`: `fromLang`, `toLang`, `beams`, `maxNewTokens`.
    Http,
    /// The Open Inference Protocol: `source_lang`, `target_lang`, `beams`, `max_new_tokens`.
    V2,
    /// Pipeline files: `from`, `to`, `beams`, `max_new_tokens` (the HTTP spellings are taken too).
    Toml,
    /// `sluice translate`: `--from`, `--to`, `--beams`, `--max-new-tokens`.
    Cli,
}

/// The settings of [`TranslationParams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    From,
    To,
    Beams,
    MaxNewTokens,
}

impl Param {
    const ALL: [Param; 4] = [Param::From, Param::To, Param::Beams, Param::MaxNewTokens];
}

impl Spelling {
    /// The keys this spelling reads for `p`, the first being its own name.
    fn keys(self, p: Param) -> &'static [&'static str] {
        match (self, p) {
            (Spelling::V2, Param::From) => &["source_lang"],
            (Spelling::V2, Param::To) => &["target_lang"],
            (Spelling::V2, Param::MaxNewTokens) => &["max_new_tokens"],
            (Spelling::Toml, Param::MaxNewTokens) => &["max_new_tokens", "maxNewTokens"],
            (Spelling::Toml, Param::From) => &["from", "fromLang"],
            (Spelling::Toml, Param::To) => &["to", "toLang"],
            (_, Param::From) => &["fromLang"],
            (_, Param::To) => &["toLang"],
            (_, Param::Beams) => &["beams"],
            (_, Param::MaxNewTokens) => &["maxNewTokens"],
        }
    }

    /// How messages name `p`.
    fn name(self, p: Param) -> String {
        let key = self.keys(p)[0];
        match self {
            Spelling::Payload => format!("payload.{key}"),
            Spelling::Http | Spelling::V2 => format!("parameters.{key}"),
            Spelling::Toml => key.to_owned(),
            Spelling::Cli => match p {
                Param::From => "--from".into(),
                Param::To => "--to".into(),
                Param::Beams => "--beams".into(),
                Param::MaxNewTokens => "--max-new-tokens".into(),
            },
        }
    }

    /// The keys this spelling takes in a parameter map, for messages.
    fn known(self) -> Vec<&'static str> {
        Param::ALL.iter().map(|&p| self.keys(p)[0]).collect()
    }
}

/// What to translate from and into, and how: every translation path reads one of these.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TranslationParams {
    /// Source language code.
    pub from: String,
    /// Target language code.
    pub to: String,
    /// Beams (1 = greedy); the model's generation config otherwise.
    pub beams: Option<usize>,
    /// Most generated tokens per text; the model's generation config otherwise.
    pub max_new_tokens: Option<usize>,
    /// Least generated tokens before a text may end (`sluice translate` only).
    pub min_new_tokens: Option<usize>,
    /// Length normalisation exponent of beam search (`sluice translate` only).
    pub length_penalty: Option<f64>,
    /// Beam stopping rule (`sluice translate` only).
    pub early_stopping: Option<EarlyStopping>,
}

impl TranslationParams {
    /// Reads a parameter map in `spelling`: the two languages are required, `beams` and the new
    /// token count are whole numbers (`2.0` is one, `2.5` is not), `null` means unset, and any
    /// other key is refused.
    pub fn parse(given: &Parameters, spelling: Spelling) -> Result<Self, ServiceError> {
        let mut found: [Option<&Value>; 4] = [None; 4];
        for (key, value) in given {
            let param = Param::ALL
                .iter()
                .position(|&p| spelling.keys(p).contains(&key.as_str()));
            match param {
                Some(i) => found[i] = Some(value),
                None => {
                    return Err(ServiceError::InvalidParameters(format!(
                        "unknown parameter {key:?}; a translation model takes {}",
                        spelling.known().join(", ")
                    )))
                }
            }
        }
        let language = |p: Param| match found[p as usize] {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ServiceError::InvalidParameters(format!(
                "{} must be a language code string",
                spelling.name(p)
            ))),
            None => Err(ServiceError::InvalidParameters(format!(
                "{} is required (a language code such as \"en\")",
                spelling.name(p)
            ))),
        };
        let number = |p: Param| match found[p as usize] {
            None | Some(Value::Null) => Ok(None),
            Some(v) => whole_number(v).map(Some).ok_or_else(|| {
                ServiceError::InvalidParameters(format!(
                    "{} must be a whole number, not {v}",
                    spelling.name(p)
                ))
            }),
        };
        Ok(Self {
            from: language(Param::From)?,
            to: language(Param::To)?,
            beams: number(Param::Beams)?,
            max_new_tokens: number(Param::MaxNewTokens)?,
            ..Self::default()
        })
    }
}

/// A whole number as JSON Schema's `integer` has it: `6` or `6.0`, not `6.5` or `-1`.
fn whole_number(v: &Value) -> Option<usize> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return usize::try_from(u).ok();
    }
    n.as_f64()
        .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= usize::MAX as f64)
        .map(|f| f as usize)
}

/// The settings texts must share to be decoded in one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateKey {
    /// Target language token (forced first).
    pub tgt: u32,
    /// Beams.
    pub beams: usize,
    /// Most generated tokens.
    pub max_new_tokens: usize,
    /// Least generated tokens.
    pub min_new_tokens: Option<usize>,
    /// Length penalty, as its bits (so keys compare exactly).
    pub length_penalty: Option<u64>,
    /// Beam stopping rule.
    pub early_stopping: Option<EarlyStopping>,
}

/// Checked parameters: the languages as token ids and the decoding settings resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translate {
    /// Source language token.
    pub src: u32,
    /// What the texts share.
    pub key: TranslateKey,
}

/// A translated text: the text and the tokens generated for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Translation {
    /// The text.
    pub text: String,
    /// The ids the decoder produced, its start first (empty for an empty text).
    pub ids: Vec<u32>,
}

/// An M2M100 model with its limits.
pub struct TranslationService {
    model: M2M100,
    limits: TranslationLimits,
}

impl std::fmt::Debug for TranslationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranslationService")
            .field("dir", &self.model.dir())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TranslationService {
    /// Loads the M2M100 model in `dir` on the context's device, as its compute type says.
    pub fn load(dir: &Path, context: &LoadContext) -> Result<Self, ModelError> {
        let device = context.device.select()?;
        let model = M2M100::load(dir, &device, context.compute)?;
        Ok(Self::new(model, context.translation.clone()))
    }

    /// Wraps a loaded model.
    pub fn new(model: M2M100, limits: TranslationLimits) -> Self {
        Self { model, limits }
    }

    /// The model.
    pub fn model(&self) -> &M2M100 {
        &self.model
    }

    /// The language codes the model knows.
    pub fn languages(&self) -> &'static [&'static str] {
        self.model.tokenizer().languages()
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &TranslationLimits {
        &self.limits
    }

    /// Most source tokens accepted per text.
    pub fn max_input_tokens(&self) -> usize {
        self.limits
            .max_input_tokens
            .unwrap_or(self.model.config().max_position_embeddings)
    }

    /// Checks languages and settings against the model and the limits, and resolves the
    /// settings left unset from the model's generation config (capped by the limits).
    pub fn check(
        &self,
        params: &TranslationParams,
        spelling: Spelling,
    ) -> Result<Translate, ServiceError> {
        let src = self.lang(&params.from, Param::From, spelling)?;
        let tgt = self.lang(&params.to, Param::To, spelling)?;
        self.check_settings(params, spelling)?;
        let (max_beams, max_new) = (
            self.limits.max_beams.get(),
            self.limits.max_new_tokens.get(),
        );
        let defaults = self.model.params(tgt, &GenerationOptions::default());
        let key = TranslateKey {
            tgt,
            beams: params
                .beams
                .unwrap_or(defaults.num_beams.min(max_beams))
                .max(1),
            max_new_tokens: params
                .max_new_tokens
                .unwrap_or(defaults.max_length.saturating_sub(1).clamp(1, max_new)),
            min_new_tokens: params.min_new_tokens,
            length_penalty: params.length_penalty.map(f64::to_bits),
            early_stopping: params.early_stopping,
        };
        Ok(Translate { src, key })
    }

    /// Checks the settings other than the languages against the limits (what a caller whose
    /// languages come later, with each record, can check up front).
    pub fn check_settings(
        &self,
        params: &TranslationParams,
        spelling: Spelling,
    ) -> Result<(), ServiceError> {
        let (max_beams, max_new) = (
            self.limits.max_beams.get(),
            self.limits.max_new_tokens.get(),
        );
        let out_of_range = |p: Param, value: usize, max: usize| ServiceError::ParameterOutOfRange {
            field: spelling.name(p),
            value,
            max,
        };
        if let Some(b) = params.beams.filter(|&b| b == 0 || b > max_beams) {
            return Err(out_of_range(Param::Beams, b, max_beams));
        }
        if let Some(n) = params.max_new_tokens.filter(|&n| n == 0 || n > max_new) {
            return Err(out_of_range(Param::MaxNewTokens, n, max_new));
        }
        Ok(())
    }

    fn lang(&self, code: &str, p: Param, spelling: Spelling) -> Result<u32, ServiceError> {
        let tok = self.model.tokenizer();
        tok.lang_id(code).map_err(|e| match e {
            ModelError::UnknownLanguage { suggestion, .. } => ServiceError::UnknownLanguage {
                field: (spelling != Spelling::Cli).then(|| spelling.name(p)),
                code: code.to_owned(),
                suggestion,
                valid: tok.languages().iter().map(|l| l.to_string()).collect(),
            },
            other => other.into(),
        })
    }

    /// Encodes text `index` for the model, refusing one over the token limit.
    pub fn encode(
        &self,
        translate: &Translate,
        index: usize,
        text: &str,
    ) -> Result<Vec<u32>, ServiceError> {
        let ids = self.model.tokenizer().encode(text, translate.src)?;
        let max = self.max_input_tokens();
        if ids.len() > max {
            return Err(ServiceError::TextTooLong {
                index,
                tokens: ids.len(),
                max,
            });
        }
        Ok(ids)
    }

    /// Translates `texts`, `batch_size` at a time, grouped by token length to limit padding;
    /// one result per text in input order, under the failure policy every translation path
    /// shares ([`M2M100::generate_each`]): a text the model cannot take fails alone. Empty
    /// texts translate to empty texts without running the model.
    pub fn translate<S: AsRef<str>>(
        &self,
        translate: &Translate,
        texts: &[S],
        batch_size: usize,
    ) -> Vec<Result<Translation, ServiceError>> {
        let mut out: Vec<Result<Translation, ServiceError>> = Vec::with_capacity(texts.len());
        let mut encoded = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            out.push(Ok(Translation::default()));
            let text = text.as_ref();
            if text.is_empty() {
                continue;
            }
            match self.encode(translate, i, text) {
                Ok(ids) => encoded.push((i, ids)),
                Err(e) => out[i] = Err(e),
            }
        }
        let params = self
            .model
            .params(translate.key.tgt, &Self::options(&translate.key));
        for (i, ids) in self.model.generate_by_length(encoded, &params, batch_size) {
            out[i] = ids
                .and_then(|ids| self.decode(ids))
                .map_err(ServiceError::from);
        }
        out
    }

    /// The text of generated ids, with them.
    fn decode(&self, ids: Vec<u32>) -> Result<Translation, ModelError> {
        let text = self.model.tokenizer().decode(&ids)?;
        Ok(Translation { text, ids })
    }

    fn options(key: &TranslateKey) -> GenerationOptions {
        GenerationOptions {
            num_beams: Some(key.beams),
            max_new_tokens: Some(key.max_new_tokens),
            min_new_tokens: key.min_new_tokens,
            length_penalty: key.length_penalty.map(f64::from_bits),
            early_stopping: key.early_stopping,
        }
    }
}

impl Batch for TranslationService {
    type Key = TranslateKey;
    type Item = Vec<u32>;
    type Done = Translation;

    /// Under the translation failure policy ([`M2M100::generate_each`]): a text the model
    /// cannot take fails alone; the rest of the batch is answered.
    fn run(
        &self,
        key: &TranslateKey,
        items: Vec<Vec<u32>>,
    ) -> Result<Vec<Result<Translation, ModelError>>, ModelError> {
        let params = self.model.params(key.tgt, &Self::options(key));
        Ok(self
            .model
            .generate_each(&items, &params)
            .into_iter()
            .map(|ids| ids.and_then(|ids| self.decode(ids)))
            .collect())
    }

    fn units(&self, done: &Translation) -> usize {
        done.ids.len().saturating_sub(1)
    }
}

impl ModelService for TranslationService {
    type Params = Translate;
    type Tag = ();

    fn kind(&self) -> &'static str {
        KIND_NAME
    }

    fn describe(&self) -> Description {
        let languages: Vec<String> = self.languages().iter().map(|l| l.to_string()).collect();
        // The schema takes every code a request may use: the model's and their aliases.
        let accepted: Vec<String> = languages
            .iter()
            .cloned()
            .chain(
                self.model
                    .tokenizer()
                    .aliases()
                    .iter()
                    .map(|(alias, _)| alias.to_string()),
            )
            .collect();
        let schema = parameters_schema(Some(&accepted), &self.limits);
        Description {
            input: InputKind::Text,
            parameters: parameter_docs(Spelling::Http),
            parameters_schema: (schema, true),
            details: json!({ "languages": languages }),
            languages: Some(languages),
            labels: None,
            platform: "sluice_m2m100",
            v2_outputs: vec![TensorInfo::new("translation", "BYTES", &[-1])],
            v2_parameters: parameter_docs(Spelling::V2),
        }
    }

    fn parameters(
        &self,
        given: &Parameters,
        spelling: Spelling,
    ) -> Result<Translate, ServiceError> {
        self.check(&TranslationParams::parse(given, spelling)?, spelling)
    }

    fn streams(&self) -> bool {
        false
    }

    fn prepare(
        &self,
        translate: &Translate,
        index: usize,
        content: Content,
        emit: &mut dyn FnMut(Work<Self>) -> Result<(), ServiceError>,
    ) -> Result<InferOutput, ServiceError> {
        let text = match content {
            Content::Text(t) => t,
            Content::Bytes { bytes, .. } => utf8(index, bytes)?,
            Content::Stream { mut reader, .. } => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut bytes)
                    .map_err(|e| ModelError::io("input", e))?;
                utf8(index, bytes)?
            }
        };
        // Empty text is answered without the model.
        if !text.is_empty() {
            let ids = self.encode(translate, index, &text)?;
            emit(Work {
                key: translate.key.clone(),
                cost: ids.len(),
                item: ids,
                tag: (),
            })?;
        }
        Ok(InferOutput {
            text: Some(String::new()),
            ..InferOutput::default()
        })
    }

    fn fold(&self, output: &mut InferOutput, _tag: (), done: Translation) {
        output.text = Some(done.text);
    }

    fn warm_up(&self) -> Result<(), ModelError> {
        let params = TranslationParams {
            from: "en".into(),
            to: "fr".into(),
            beams: Some(1),
            max_new_tokens: Some(4),
            ..TranslationParams::default()
        };
        let translate = self
            .check(&params, Spelling::Toml)
            .map_err(|e| ModelError::InvalidSettings(e.to_string()))?;
        for t in self.translate(&translate, &["Hello, world."], 1) {
            t.map_err(|e| ModelError::InvalidSettings(e.to_string()))?;
        }
        Ok(())
    }

    fn v2_inputs(&self, _sources: &[&str]) -> Vec<TensorInfo> {
        vec![TensorInfo::new("text", "BYTES", &[-1])]
    }

    fn v2_request(
        &self,
        input: &str,
        elements: Vec<Vec<u8>>,
        parameters: Parameters,
    ) -> Result<(Vec<InferInput>, Parameters), ServiceError> {
        if input != "text" {
            return Err(ServiceError::InvalidRequest(format!(
                "a translation model takes the input \"text\", not {input:?}"
            )));
        }
        let inputs = tensor_inputs(elements, |one, i, bytes| {
            one.text = Some(element_text(input, i, bytes)?);
            Ok(())
        })?;
        Ok((inputs, parameters))
    }

    fn v2_outputs(&self, shape: &[i64], outputs: Vec<InferOutput>) -> Vec<NamedTensor> {
        let texts = outputs
            .into_iter()
            .map(|o| o.text.unwrap_or_default().into_bytes())
            .collect();
        vec![NamedTensor {
            name: "translation",
            shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
            data: Tensor::Bytes(texts),
        }]
    }
}

/// The JSON Schema of a translation model's `/v1` parameters under `limits`, its language codes
/// listed when they are known (a model still loading has none yet).
pub fn parameters_schema(languages: Option<&[String]>, limits: &TranslationLimits) -> Value {
    let language = match languages {
        Some(codes) => json!({ "type": "string", "enum": codes }),
        None => json!({ "type": "string" }),
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["fromLang", "toLang"],
        "properties": {
            "fromLang": language,
            "toLang": language,
            "beams": { "type": ["integer", "null"], "minimum": 1, "maximum": limits.max_beams.get() },
            "maxNewTokens": { "type": ["integer", "null"], "minimum": 1, "maximum": limits.max_new_tokens.get() },
        },
    })
}

/// The parameters of a translation model as `spelling` names them, each with what it means
/// (`GET /v1/models`, v2 model metadata).
pub fn parameter_docs(spelling: Spelling) -> Value {
    Param::ALL
        .iter()
        .map(|&p| {
            let doc = match p {
                Param::From => "source language code (required)",
                Param::To => "target language code (required)",
                Param::Beams => "beams for beam search, 1 = greedy (optional)",
                Param::MaxNewTokens => "most generated tokens per text (optional)",
            };
            (spelling.keys(p)[0].to_owned(), Value::from(doc))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn utf8(index: usize, bytes: Vec<u8>) -> Result<String, ServiceError> {
    String::from_utf8(bytes).map_err(|_| ServiceError::Input {
        index,
        problem: InputProblem::NotUtf8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Parameters {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_spelling_reads_the_same_parameters_and_names_them_its_own_way() {
        let want = TranslationParams {
            from: "en".into(),
            to: "ja".into(),
            beams: Some(2),
            max_new_tokens: Some(30),
            ..TranslationParams::default()
        };
        for (spelling, given) in [
            (
                Spelling::Http,
                json!({"fromLang": "en", "toLang": "ja", "beams": 2, "maxNewTokens": 30.0}),
            ),
            (
                Spelling::V2,
                json!({"source_lang": "en", "target_lang": "ja", "beams": 2, "max_new_tokens": 30}),
            ),
            (
                Spelling::Toml,
                json!({"from": "en", "to": "ja", "beams": 2, "max_new_tokens": 30}),
            ),
            (
                Spelling::Toml,
                json!({"fromLang": "en", "toLang": "ja", "beams": 2, "maxNewTokens": 30}),
            ),
        ] {
            assert_eq!(
                TranslationParams::parse(&map(given), spelling).unwrap(),
                want,
                "{spelling:?}"
            );
        }
        let missing = TranslationParams::parse(&map(json!({"to": "ja"})), Spelling::Toml);
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("from is required"));
        let missing = TranslationParams::parse(&map(json!({"target_lang": "ja"})), Spelling::V2);
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("parameters.source_lang is required"));
        let half = json!({"fromLang": "en", "toLang": "ja", "beams": 2.5});
        let e = TranslationParams::parse(&map(half), Spelling::Http).unwrap_err();
        assert!(
            e.to_string()
                .contains("parameters.beams must be a whole number"),
            "{e}"
        );
        // The server's spellings take only their own keys.
        let toml_on_http = json!({"from": "en", "toLang": "ja"});
        let e = TranslationParams::parse(&map(toml_on_http), Spelling::Http).unwrap_err();
        assert!(e.to_string().contains("unknown parameter \"from\""), "{e}");
    }
}
