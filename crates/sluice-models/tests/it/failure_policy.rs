//! The failure policy every translation path shares: a sentence the model cannot take fails
//! alone, and the rest of its batch gets exactly what it would get without it.

use std::path::PathBuf;

use candle_core::Device;
use sluice_models::m2m100::{ComputeType, GenerationOptions, TranslateTexts, M2M100};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m2m100")
}

#[test]
fn a_sentence_the_model_cannot_take_fails_alone_in_both_precisions() {
    for compute in [ComputeType::Float32, ComputeType::Int8] {
        let m = M2M100::load(&fixture_dir(), &Device::Cpu, compute).unwrap();
        let tok = m.tokenizer();
        let (src, tgt) = (tok.lang_id("en").unwrap(), tok.lang_id("ja").unwrap());
        let params = m.params(tgt, &GenerationOptions::default());
        let a = tok.encode("Hello, world.", src).unwrap();
        let b = tok.encode("The weather is nice today.", src).unwrap();
        // A token id past the vocabulary: what a corrupt or mismatched input looks like.
        let mut bad = a.clone();
        bad[1] = m.config().vocab_size as u32 + 7;
        let alone: Vec<Vec<u32>> = [&a, &b]
            .iter()
            .map(|s| m.generate_ids(&[(*s).clone()], &params).unwrap().remove(0))
            .collect();
        assert!(m
            .generate_ids(&[a.clone(), bad.clone(), b.clone()], &params)
            .is_err());
        let each = m.generate_each(&[a.clone(), bad, b.clone()], &params);
        assert_eq!(each.len(), 3);
        assert_eq!(each[0].as_ref().unwrap(), &alone[0], "{compute:?}");
        assert!(each[1].is_err(), "{compute:?}");
        assert_eq!(each[2].as_ref().unwrap(), &alone[1], "{compute:?}");
        // A batch that succeeds is one generation, as before.
        let together = m.generate_ids(&[a.clone(), b.clone()], &params).unwrap();
        let each: Vec<Vec<u32>> = m
            .generate_each(&[a, b], &params)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(each, together);
    }
}

#[test]
fn translate_each_answers_every_text_and_fails_only_on_an_unknown_language() {
    let m = M2M100::load(&fixture_dir(), &Device::Cpu, ComputeType::Float32).unwrap();
    let texts = ["Hello, world.", "", "The weather is nice today."];
    let opts = GenerationOptions::default();
    let request = TranslateTexts::new(&texts, "en", "ja")
        .options(opts)
        .batch_size(2);
    let each = m.translate_each(&request).unwrap();
    let plain = m.translate(&request).unwrap();
    let each: Vec<String> = each.into_iter().map(Result::unwrap).collect();
    assert_eq!(each, plain);
    let unknown = TranslateTexts::new(&texts, "en", "xx").batch_size(2);
    assert!(m.translate_each(&unknown).is_err());
}
