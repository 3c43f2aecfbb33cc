//! The `translate` stage of a TOML pipeline on the tiny M2M100 fixture: every record gets the
//! translation transformers produced for it (`tests/fixtures/tiny-m2m100/reference.json`, beam
//! defaults, en → ja), and a record without the text field is a failure, not an abort.

use serde_json::Value;
use sluice_pipeline::config::{PipelineConfig, RawConfig};
use sluice_pipeline::{PartFormat, PartSink, Progress};
use std::collections::HashMap;

#[test]
fn translate_stage_matches_transformers_and_isolates_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let refs = sluice_testkit::tiny_m2m100_en_ja();
    assert_eq!(refs.len(), 10, "the fixture's non-empty sentences");
    let mut input = String::new();
    for (i, (source, _)) in refs.iter().enumerate() {
        input += &serde_json::json!({"id": format!("s{i}"), "text": source}).to_string();
        input.push('\n');
    }
    input += "{\"id\": \"no-text\", \"body\": \"hello\"}\n";
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        r#"[source]
kind = "jsonl"
path = "{input}"
key = "id"

[[stage]]
kind = "translate"
model = "{model}"
from = "en"
to = "ja"
batch_size = 4
workers = 2
compute_type = "float32"

[sink]
kind = "jsonl"
path = "{out}"
"#,
        input = dir.path().join("in.jsonl").display(),
        model = sluice_testkit::fixture("tiny-m2m100").display(),
        out = out.display(),
    );
    let mut config = PipelineConfig::from_raw_with(
        RawConfig::parse(&dir.path().join("p.toml"), &toml, &[]).unwrap(),
        &sluice_stages::registry(),
    )
    .unwrap();
    config.options.progress = Progress::Off;
    let summary = config.run().unwrap();
    assert_eq!(
        (summary.items_out, summary.failed),
        (refs.len() as u64, 1),
        "{}",
        summary.render()
    );

    let mut got = HashMap::new();
    for part in PartSink::part_files(&out, PartFormat::Jsonl).unwrap() {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            got.insert(
                r["id"].as_str().unwrap().to_string(),
                r["translation"].as_str().unwrap().to_string(),
            );
        }
    }
    for (i, (source, expected)) in refs.iter().enumerate() {
        assert_eq!(
            &got[&format!("s{i}")],
            expected,
            "translation of {source:?}"
        );
    }
    let failures = std::fs::read_to_string(out.join("_failures.jsonl")).unwrap();
    assert!(
        failures.contains("no-text") && failures.contains("no text field \\\"text\\\""),
        "{failures}"
    );
}

/// A model that is not there, or a language it does not know, is the same for every worker: the
/// run stops after the first setup with that error instead of restarting workers (9 attempts of
/// the same failure before).
#[test]
fn a_model_that_cannot_load_stops_the_run_at_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\": \"a\", \"text\": \"hi\"}\n",
    )
    .unwrap();
    let tiny = sluice_testkit::fixture("tiny-m2m100");
    let missing = dir.path().join("no-such-model");
    let cases = [
        (missing.display().to_string(), "en", "does not exist"),
        (
            tiny.display().to_string(),
            "xx",
            "unknown language code \"xx\"",
        ),
    ];
    for (model, from, want) in cases {
        let toml = format!(
            "[source]\nkind = \"jsonl\"\npath = \"{input}\"\nkey = \"id\"\n\n[[stage]]\n\
             kind = \"translate\"\nmodel = \"{model}\"\nfrom = \"{from}\"\nto = \"ja\"\n\
             workers = 1\n\n[sink]\nkind = \"jsonl\"\npath = \"{out}\"\n",
            input = dir.path().join("in.jsonl").display(),
            out = dir.path().join("out").display(),
        );
        let mut config = PipelineConfig::from_raw_with(
            RawConfig::parse(&dir.path().join("p.toml"), &toml, &[]).unwrap(),
            &sluice_stages::registry(),
        )
        .unwrap();
        config.options.progress = Progress::Off;
        let err = config.run().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        assert!(
            err.contains("setup failed") && err.contains("not retried"),
            "{err}"
        );
    }
}

/// What the model service gives for `texts` from `from` into `to` with the model's defaults.
fn translated(texts: &[&str], from: &str, to: &str) -> Vec<String> {
    use sluice_models::service::{LoadContext, Model, Spelling, TranslationParams};
    let context = LoadContext::cpu(sluice_models::m2m100::ComputeType::Float32);
    let source = sluice_models::ModelSource::parse(
        &sluice_testkit::fixture("tiny-m2m100").display().to_string(),
    );
    let Model::Translation(service) = sluice_models::service::load(&source, &context).unwrap()
    else {
        panic!("not a translation model")
    };
    let params = TranslationParams {
        from: from.into(),
        to: to.into(),
        ..TranslationParams::default()
    };
    let translate = service.check(&params, Spelling::Toml).unwrap();
    service
        .translate(&translate, texts, 16)
        .into_iter()
        .map(|t| t.unwrap().text)
        .collect()
}

#[test]
fn records_carry_their_own_languages_and_a_bad_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let refs = sluice_testkit::tiny_m2m100_en_ja();
    let texts: Vec<&str> = refs.iter().map(|(s, _)| s.as_str()).collect();
    // Alternating targets in one batch, so the stage must group the records by pair.
    let mut input = String::new();
    for (i, text) in texts.iter().enumerate() {
        let (lang, target) = if i % 2 == 0 {
            ("en", "ja")
        } else {
            ("de", "fr")
        };
        input += &serde_json::json!({"id": format!("s{i}"), "text": text, "lang": lang,
                                     "target": target})
        .to_string();
        input.push('\n');
    }
    input += "{\"id\": \"bad-lang\", \"text\": \"hi\", \"lang\": \"en\", \"target\": \"xx\"}\n";
    input += "{\"id\": \"no-lang\", \"text\": \"hi\", \"target\": \"ja\"}\n";
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        "[source]\nkind = \"jsonl\"\npath = \"{input}\"\nkey = \"id\"\n\n[[stage]]\n\
         kind = \"translate\"\nmodel = \"{model}\"\nfrom_field = \"lang\"\nto_field = \"target\"\n\
         batch_size = 16\nworkers = 1\ncompute_type = \"float32\"\n\n[sink]\nkind = \"jsonl\"\n\
         path = \"{out}\"\n",
        input = dir.path().join("in.jsonl").display(),
        model = sluice_testkit::fixture("tiny-m2m100").display(),
        out = out.display(),
    );
    let mut config = PipelineConfig::from_raw_with(
        RawConfig::parse(&dir.path().join("p.toml"), &toml, &[]).unwrap(),
        &sluice_stages::registry(),
    )
    .unwrap();
    config.options.progress = Progress::Off;
    let summary = config.run().unwrap();
    assert_eq!(
        (summary.items_out, summary.failed),
        (texts.len() as u64, 2),
        "{}",
        summary.render()
    );
    let mut got = HashMap::new();
    for part in PartSink::part_files(&out, PartFormat::Jsonl).unwrap() {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            got.insert(
                r["id"].as_str().unwrap().to_string(),
                r["translation"].as_str().unwrap().to_string(),
            );
        }
    }
    let de_fr: Vec<&str> = texts.iter().skip(1).step_by(2).copied().collect();
    let want_fr = translated(&de_fr, "de", "fr");
    for (i, (source, ja)) in refs.iter().enumerate() {
        let want = if i % 2 == 0 { ja } else { &want_fr[i / 2] };
        assert_eq!(&got[&format!("s{i}")], want, "record {i}: {source:?}");
    }
    let failures = std::fs::read_to_string(out.join("_failures.jsonl")).unwrap();
    assert!(
        failures.contains("bad-lang") && failures.contains("unknown language code \\\"xx\\\""),
        "{failures}"
    );
    assert!(
        failures.contains("no-lang") && failures.contains("no language field \\\"lang\\\""),
        "{failures}"
    );
}

#[test]
fn a_language_given_both_fixed_and_by_field_or_not_at_all_is_refused() {
    for (keys, want) in [
        (
            "from = \"en\"\nfrom_field = \"lang\"\nto = \"ja\"",
            "only one of `from`",
        ),
        (
            "from = \"en\"",
            "one of `to` (a language code) or `to_field`",
        ),
    ] {
        let toml = format!(
            "[source]\nkind = \"jsonl\"\npath = \"in.jsonl\"\nkey = \"id\"\n\n[[stage]]\n\
             kind = \"translate\"\n{keys}\n\n[sink]\nkind = \"jsonl\"\npath = \"out\"\n"
        );
        let err = match PipelineConfig::from_raw_with(
            RawConfig::parse(std::path::Path::new("p.toml"), &toml, &[]).unwrap(),
            &sluice_stages::registry(),
        ) {
            Ok(_) => panic!("accepted {keys:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{keys:?}: {err}");
    }
}

#[test]
fn an_nllb_model_translates_in_a_pipeline_with_iso_codes() {
    let dir = tempfile::tempdir().unwrap();
    let nllb = sluice_testkit::fixture("tiny-nllb");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(nllb.join("reference.json")).unwrap())
            .unwrap();
    let case = &reference["generation"][0];
    assert_eq!(case["name"], "defaults");
    let mut input = String::new();
    for (i, c) in reference["tokenize"].as_array().unwrap().iter().enumerate() {
        input += &serde_json::json!({"id": format!("s{i}"), "text": c["text"]}).to_string();
        input.push('\n');
    }
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let out = dir.path().join("out");
    let toml = format!(
        "[source]\nkind = \"jsonl\"\npath = \"{input}\"\nkey = \"id\"\n\n[[stage]]\n\
         kind = \"translate\"\nmodel = \"{model}\"\nfrom = \"en\"\nto = \"fr\"\n\
         compute_type = \"float32\"\n\n[sink]\nkind = \"jsonl\"\npath = \"{out}\"\n",
        input = dir.path().join("in.jsonl").display(),
        model = nllb.display(),
        out = out.display(),
    );
    let mut config = PipelineConfig::from_raw_with(
        RawConfig::parse(&dir.path().join("p.toml"), &toml, &[]).unwrap(),
        &sluice_stages::registry(),
    )
    .unwrap();
    config.options.progress = Progress::Off;
    let summary = config.run().unwrap();
    assert_eq!(summary.failed, 0, "{}", summary.render());
    let mut got = HashMap::new();
    for part in PartSink::part_files(&out, PartFormat::Jsonl).unwrap() {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            got.insert(
                r["id"].as_str().unwrap().to_string(),
                r["translation"].as_str().unwrap().to_string(),
            );
        }
    }
    for (i, want) in case["texts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(got[&format!("s{i}")], want.as_str().unwrap(), "record {i}");
    }
}
