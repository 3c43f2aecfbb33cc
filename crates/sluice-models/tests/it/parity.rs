//! What the parity tests of every translation family share: a tiny fixture written by a `tools/`
//! script with transformers' reference outputs (`reference.json`), loaded once, and the checks
//! each family must pass against it (token ids, decoded text, generation batched and unbatched).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use serde_json::Value;
use sluice_models::m2m100::{ComputeType, EarlyStopping, GenerationOptions, M2M100};

/// A fixture directory under `tests/fixtures`, its reference and its float32 model, each read
/// once per test binary.
pub struct Fixture {
    name: &'static str,
    reference: OnceLock<Value>,
    model: OnceLock<M2M100>,
}

impl Fixture {
    /// The fixture `tests/fixtures/{name}`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            reference: OnceLock::new(),
            model: OnceLock::new(),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> PathBuf {
        sluice_testkit::fixture(self.name)
    }

    /// Its `reference.json`.
    pub fn reference(&self) -> &Value {
        self.reference
            .get_or_init(|| sluice_testkit::fixture_reference(self.name))
    }

    /// Its model in float32 (what reproduces transformers token for token).
    pub fn model(&self) -> &M2M100 {
        self.model
            .get_or_init(|| M2M100::load(&self.dir(), &Device::Cpu, ComputeType::Float32).unwrap())
    }

    /// The reference's source texts, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.reference()["tokenize"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap())
            .collect()
    }

    /// Every `tokenize` case encodes to the reference's ids.
    pub fn check_tokenize(&self) {
        let tok = self.model().tokenizer();
        for case in self.reference()["tokenize"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let lang = tok.lang_id(case["lang"].as_str().unwrap()).unwrap();
            assert_eq!(
                tok.encode(text, lang).unwrap(),
                ids(&case["ids"]),
                "text {text:?}"
            );
        }
    }

    /// Every `decode` case decodes to the reference's text.
    pub fn check_decode(&self) {
        let tok = self.model().tokenizer();
        for case in self.reference()["decode"].as_array().unwrap() {
            let got = tok.decode(&ids(&case["ids"])).unwrap();
            assert_eq!(got, case["text"].as_str().unwrap(), "ids {:?}", case["ids"]);
        }
    }

    /// Every `generation` case, the texts encoded from `src` and generated `batch_size` at a time,
    /// gives the reference's ids and texts.
    pub fn check_generation(&self, src: &str, batch_size: usize) {
        let m = self.model();
        let tok = m.tokenizer();
        let src = tok.lang_id(src).unwrap();
        let sources: Vec<Vec<u32>> = self
            .texts()
            .iter()
            .map(|t| tok.encode(t, src).unwrap())
            .collect();
        for case in self.reference()["generation"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let tgt = tok.lang_id(case["tgt"].as_str().unwrap()).unwrap();
            let params = m.params(tgt, &options(&case["options"]));
            let want: Vec<Vec<u32>> = case["ids"].as_array().unwrap().iter().map(ids).collect();
            let texts = case_texts(case);
            for (start, chunk) in sources.chunks(batch_size).enumerate() {
                let got = m.generate_ids(chunk, &params).unwrap();
                for (j, g) in got.iter().enumerate() {
                    let i = start * batch_size + j;
                    assert_eq!(g, &want[i], "{name}, sentence {i}, batch size {batch_size}");
                    assert_eq!(tok.decode(g).unwrap(), texts[i], "{name} text {i}");
                }
            }
        }
    }
}

/// Token ids written as a JSON array.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A generation case's texts.
pub fn case_texts(case: &Value) -> Vec<&str> {
    case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

/// A generation case's options, as transformers' `generate` keywords name them.
pub fn options(v: &Value) -> GenerationOptions {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
    GenerationOptions {
        num_beams: n("num_beams"),
        max_new_tokens: n("max_new_tokens"),
        min_new_tokens: n("min_new_tokens"),
        length_penalty: v.get("length_penalty").and_then(Value::as_f64),
        early_stopping: v.get("early_stopping").map(|e| match e {
            Value::Bool(true) => EarlyStopping::True,
            Value::Bool(false) => EarlyStopping::Heuristic,
            _ => EarlyStopping::Never,
        }),
    }
}
