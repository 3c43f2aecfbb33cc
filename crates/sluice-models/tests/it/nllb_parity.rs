//! Parity with transformers on the tiny NLLB-200 fixture written by `tools/make_tiny_nllb.py`:
//! identical token ids and decoded text from `tokenizer.json`, identical greedy and beam-search
//! outputs batched and unbatched, NLLB's generation defaults, and ISO 639-1 codes standing for
//! NLLB's.

use sluice_models::m2m100::{Tokenizer, TranslateTexts};
use sluice_models::ModelError;

use crate::parity::{case_texts, Fixture};

static FIXTURE: Fixture = Fixture::new("tiny-nllb");

#[test]
fn the_nllb_tokenizer_is_picked_and_its_ids_match_reference() {
    let tok = FIXTURE.model().tokenizer();
    assert!(matches!(tok, Tokenizer::Nllb(_)), "{tok:?}");
    FIXTURE.check_tokenize();
}

#[test]
fn decoding_matches_reference() {
    FIXTURE.check_decode();
}

#[test]
fn iso_codes_name_the_same_language_tokens_and_unknown_codes_list_nllbs() {
    let tok = FIXTURE.model().tokenizer();
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

#[test]
fn generation_matches_reference_one_sentence_at_a_time() {
    FIXTURE.check_generation("eng_Latn", 1);
}

#[test]
fn generation_matches_reference_in_batches_of_three_and_one_padded_batch() {
    FIXTURE.check_generation("eng_Latn", 3);
    FIXTURE.check_generation("eng_Latn", 64);
}

#[test]
fn translate_with_iso_codes_gives_the_references_texts_under_nllbs_defaults() {
    let case = &FIXTURE.reference()["generation"][0];
    assert_eq!(case["name"], "defaults");
    let got = FIXTURE
        .model()
        .translate(&TranslateTexts::new(&FIXTURE.texts(), "en", "fr"))
        .unwrap();
    assert_eq!(got, case_texts(case));
}
