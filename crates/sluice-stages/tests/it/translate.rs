//! The `translate` stage of a TOML pipeline on the tiny fixtures: every record gets the
//! translation transformers produced for it (`tests/fixtures/tiny-m2m100/reference.json`, beam
//! defaults, en → ja; the NLLB fixture en → fr), records may carry their own languages, and a
//! record without the text field or with a bad language is a failure, not an abort.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};
use sluice_pipeline::config::{PipelineConfig, RawConfig};
use sluice_pipeline::{PartFormat, PartSink, Progress};

/// A pipeline reading `records` (written to `dir/in.jsonl`, keyed by `id`) through one
/// `translate` stage with the TOML keys `stage` into JSON lines under `dir/out`; the error text
/// when the file is refused.
fn pipeline(dir: &Path, records: &[Value], stage: &str) -> Result<PipelineConfig, String> {
    let input: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let toml = format!(
        "[source]\nkind = \"jsonl\"\npath = \"{input}\"\nkey = \"id\"\n\n[[stage]]\n\
         kind = \"translate\"\n{stage}\n\n[sink]\nkind = \"jsonl\"\npath = \"{out}\"\n",
        input = dir.join("in.jsonl").display(),
        out = dir.join("out").display(),
    );
    let mut config = PipelineConfig::from_raw_with(
        RawConfig::parse(&dir.join("p.toml"), &toml, &[]).unwrap(),
        &sluice_stages::registry(),
    )
    .map_err(|e| e.to_string())?;
    config.options.progress = Progress::Off;
    Ok(config)
}

/// The `translation` of each record the pipeline wrote, by id.
fn translations(dir: &Path) -> HashMap<String, String> {
    let mut got = HashMap::new();
    for part in PartSink::part_files(&dir.join("out"), PartFormat::Jsonl).unwrap() {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            got.insert(
                r["id"].as_str().unwrap().to_string(),
                r["translation"].as_str().unwrap().to_string(),
            );
        }
    }
    got
}

/// The failures file of the pipeline's run.
fn failures(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("out/_failures.jsonl")).unwrap()
}

#[test]
fn translate_stage_matches_transformers_and_isolates_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let refs = sluice_testkit::tiny_m2m100_en_ja();
    assert_eq!(refs.len(), 10, "the fixture's non-empty sentences");
    let mut records: Vec<Value> = refs
        .iter()
        .enumerate()
        .map(|(i, (source, _))| json!({"id": format!("s{i}"), "text": source}))
        .collect();
    records.push(json!({"id": "no-text", "body": "hello"}));
    let stage = format!(
        "model = \"{}\"\nfrom = \"en\"\nto = \"ja\"\nbatch_size = 4\nworkers = 2\n\
         compute_type = \"float32\"",
        sluice_testkit::fixture("tiny-m2m100").display()
    );
    let summary = pipeline(dir.path(), &records, &stage)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        (summary.items_out, summary.failed),
        (refs.len() as u64, 1),
        "{}",
        summary.render()
    );
    let got = translations(dir.path());
    for (i, (source, expected)) in refs.iter().enumerate() {
        assert_eq!(
            &got[&format!("s{i}")],
            expected,
            "translation of {source:?}"
        );
    }
    let failures = failures(dir.path());
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
        let stage = format!("model = \"{model}\"\nfrom = \"{from}\"\nto = \"ja\"\nworkers = 1");
        let err = pipeline(dir.path(), &[json!({"id": "a", "text": "hi"})], &stage)
            .unwrap()
            .run()
            .unwrap_err()
            .to_string();
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
    let mut records: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let (lang, target) = if i % 2 == 0 {
                ("en", "ja")
            } else {
                ("de", "fr")
            };
            json!({"id": format!("s{i}"), "text": text, "lang": lang, "target": target})
        })
        .collect();
    records.push(json!({"id": "bad-lang", "text": "hi", "lang": "en", "target": "xx"}));
    records.push(json!({"id": "no-lang", "text": "hi", "target": "ja"}));
    let stage = format!(
        "model = \"{}\"\nfrom_field = \"lang\"\nto_field = \"target\"\nbatch_size = 16\n\
         workers = 1\ncompute_type = \"float32\"",
        sluice_testkit::fixture("tiny-m2m100").display()
    );
    let summary = pipeline(dir.path(), &records, &stage)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        (summary.items_out, summary.failed),
        (texts.len() as u64, 2),
        "{}",
        summary.render()
    );
    let got = translations(dir.path());
    let de_fr: Vec<&str> = texts.iter().skip(1).step_by(2).copied().collect();
    let want_fr = translated(&de_fr, "de", "fr");
    for (i, (source, ja)) in refs.iter().enumerate() {
        let want = if i % 2 == 0 { ja } else { &want_fr[i / 2] };
        assert_eq!(&got[&format!("s{i}")], want, "record {i}: {source:?}");
    }
    let failures = failures(dir.path());
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
    let dir = tempfile::tempdir().unwrap();
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
        let err = match pipeline(dir.path(), &[], keys) {
            Ok(_) => panic!("accepted {keys:?}"),
            Err(e) => e,
        };
        assert!(err.contains(want), "{keys:?}: {err}");
    }
}

#[test]
fn an_nllb_model_translates_in_a_pipeline_with_iso_codes() {
    let dir = tempfile::tempdir().unwrap();
    let refs = sluice_testkit::tiny_nllb_en_fr();
    let records: Vec<Value> = refs
        .iter()
        .enumerate()
        .map(|(i, (source, _))| json!({"id": format!("s{i}"), "text": source}))
        .collect();
    let stage = format!(
        "model = \"{}\"\nfrom = \"en\"\nto = \"fr\"\ncompute_type = \"float32\"",
        sluice_testkit::fixture("tiny-nllb").display()
    );
    let summary = pipeline(dir.path(), &records, &stage)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(summary.failed, 0, "{}", summary.render());
    let got = translations(dir.path());
    for (i, (_, want)) in refs.iter().enumerate() {
        assert_eq!(&got[&format!("s{i}")], want, "record {i}");
    }
}
