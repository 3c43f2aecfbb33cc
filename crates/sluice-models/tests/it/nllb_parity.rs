//! Parity with transformers on the tiny NLLB-200 fixture written by `tools/make_tiny_nllb.py`:
//! identical token ids and decoded text from `tokenizer.json`, identical greedy and beam-search
//! outputs batched and unbatched, NLLB's generation defaults, and ISO 639-1 codes standing for
//! NLLB's.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use serde_json::Value;
use sluice_models::m2m100::{ComputeType, Tokenizer, TranslateTexts, M2M100};
use sluice_models::ModelError;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-nllb")
}

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let text = std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn model() -> &'static M2M100 {
    static MODEL: OnceLock<M2M100> = OnceLock::new();
    MODEL.get_or_init(|| M2M100::load(&fixture_dir(), &Device::Cpu, ComputeType::Float32).unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn the_nllb_tokenizer_is_picked_and_its_ids_match_reference() {
    let tok = model().tokenizer();
    assert!(matches!(tok, Tokenizer::Nllb(_)), "{tok:?}");
    for case in reference()["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let lang = tok.lang_id(case["lang"].as_str().unwrap()).unwrap();
        assert_eq!(
            tok.encode(text, lang).unwrap(),
            ids(&case["ids"]),
            "text {text:?}"
        );
    }
}

#[test]
fn decoding_matches_reference() {
    let tok = model().tokenizer();
    for case in reference()["decode"].as_array().unwrap() {
        let got = tok.decode(&ids(&case["ids"])).unwrap();
        assert_eq!(got, case["text"].as_str().unwrap(), "ids {:?}", case["ids"]);
    }
}

#[test]
fn iso_codes_name_the_same_language_tokens_and_unknown_codes_list_nllbs() {
    let tok = model().tokenizer();
    for (iso, nllb) in [("en", "eng_Latn"), ("fr", "fra_Latn"), ("zh", "zho_Hans")] {
        assert_eq!(
            tok.lang_id(iso).unwrap(),
            tok.lang_id(nllb).unwrap(),
            "{iso}"
        );
    }
    match tok.lang_id("EN") {
        Err(ModelError::UnknownLanguage {
            suggestion, known, ..
        }) => {
            assert_eq!(suggestion.as_deref(), Some("eng_Latn"));
            assert_eq!(known.len(), 202);
            assert!(known.contains(&"zul_Latn"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        tok.lang_id("xx_Yyyy"),
        Err(ModelError::UnknownLanguage { .. })
    ));
}

fn check_generation(batch_size: usize) {
    let m = model();
    let tok = m.tokenizer();
    let src = tok.lang_id("eng_Latn").unwrap();
    let sources: Vec<Vec<u32>> = reference()["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| tok.encode(c["text"].as_str().unwrap(), src).unwrap())
        .collect();
    for case in reference()["generation"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tgt = tok.lang_id(case["tgt"].as_str().unwrap()).unwrap();
        let o = &case["options"];
        let n = |k: &str| o.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let options = sluice_models::m2m100::GenerationOptions {
            num_beams: n("num_beams"),
            max_new_tokens: n("max_new_tokens"),
            min_new_tokens: n("min_new_tokens"),
            length_penalty: o.get("length_penalty").and_then(Value::as_f64),
            early_stopping: o.get("early_stopping").map(|e| match e {
                Value::Bool(true) => sluice_models::m2m100::EarlyStopping::True,
                Value::Bool(false) => sluice_models::m2m100::EarlyStopping::Heuristic,
                _ => sluice_models::m2m100::EarlyStopping::Never,
            }),
        };
        let params = m.params(tgt, &options);
        let want: Vec<Vec<u32>> = case["ids"].as_array().unwrap().iter().map(ids).collect();
        let texts = case["texts"].as_array().unwrap();
        for (start, chunk) in sources.chunks(batch_size).enumerate() {
            let got = m.generate_ids(chunk, &params).unwrap();
            for (j, g) in got.iter().enumerate() {
                let i = start * batch_size + j;
                assert_eq!(g, &want[i], "{name}, sentence {i}, batch size {batch_size}");
                assert_eq!(
                    tok.decode(g).unwrap(),
                    texts[i].as_str().unwrap(),
                    "{name} {i}"
                );
            }
        }
    }
}

#[test]
fn generation_matches_reference_one_sentence_at_a_time() {
    check_generation(1);
}

#[test]
fn generation_matches_reference_in_batches_of_three_and_one_padded_batch() {
    check_generation(3);
    check_generation(64);
}

#[test]
fn translate_with_iso_codes_gives_the_references_texts_under_nllbs_defaults() {
    let case = &reference()["generation"][0];
    assert_eq!(case["name"], "defaults");
    let texts: Vec<&str> = reference()["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let got = model()
        .translate(&TranslateTexts::new(&texts, "en", "fr"))
        .unwrap();
    let want: Vec<&str> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(got, want);
}
