//! The `model` stage in-process on a translation model: the same translations as transformers'
//! reference (as the server gives them), its parameters in either spelling, and checked when a
//! worker sets up, so a bad setting stops the run at once instead of failing every record.

use serde_json::Value;
use sluice_pipeline::config::{PipelineConfig, RawConfig};
use sluice_pipeline::{PartFormat, PartSink, Progress, RunError};
use std::collections::HashMap;

fn run(dir: &std::path::Path, parameters: &str) -> Result<HashMap<String, Value>, RunError> {
    let refs = sluice_testkit::tiny_m2m100_en_ja();
    let mut input = String::new();
    for (i, (source, _)) in refs.iter().enumerate() {
        input += &serde_json::json!({"id": format!("s{i}"), "text": source}).to_string();
        input.push('\n');
    }
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let out = dir.join("out");
    let toml = format!(
        "[run]\nskip_completed = false\n\n[source]\nkind = \"jsonl\"\npath = \"{input}\"\n\
         key = \"id\"\n\n[[stage]]\nkind = \"model\"\nmodel = \"{model}\"\nfield = \"text\"\n\
         input = \"text\"\noutput = \"result\"\nparameters = {parameters}\n\
         compute_type = \"float32\"\nworkers = 1\n\n[sink]\nkind = \"jsonl\"\npath = \"{out}\"\n",
        input = dir.join("in.jsonl").display(),
        model = sluice_testkit::fixture("tiny-m2m100").display(),
        out = out.display(),
    );
    let raw = RawConfig::parse(&dir.join("p.toml"), &toml, &[]).unwrap();
    let mut config = PipelineConfig::from_raw_with(raw, &sluice_stages::registry()).unwrap();
    config.options.progress = Progress::Off;
    config.run()?;
    let mut got = HashMap::new();
    for part in PartSink::part_files(&out, PartFormat::Jsonl).unwrap() {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            got.insert(r["id"].as_str().unwrap().to_owned(), r["result"].clone());
        }
    }
    Ok(got)
}

#[test]
fn the_model_stage_translates_as_the_reference_with_either_spelling() {
    let refs = sluice_testkit::tiny_m2m100_en_ja();
    for parameters in [
        "{ from = \"en\", to = \"ja\" }",
        "{ fromLang = \"en\", toLang = \"ja\" }",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let got = run(dir.path(), parameters).unwrap();
        assert_eq!(got.len(), refs.len(), "{parameters}");
        for (i, (source, expected)) in refs.iter().enumerate() {
            assert_eq!(
                got[&format!("s{i}")],
                serde_json::json!({ "text": expected }),
                "{source:?} with {parameters}"
            );
        }
    }
}

#[test]
fn bad_parameters_stop_the_run_at_setup_with_the_reason() {
    for (parameters, want) in [
        (
            "{ from = \"en\", to = \"xx\" }",
            "unknown language code \"xx\" in to",
        ),
        (
            "{ from = \"en\", to = \"ja\", beams = 0 }",
            "beams is 0; it must be at least 1",
        ),
        ("{ to = \"ja\" }", "from is required"),
        (
            "{ from = \"en\", to = \"ja\", temperature = 2 }",
            "unknown parameter \"temperature\"",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = run(dir.path(), parameters).unwrap_err().to_string();
        assert!(err.contains(want), "{parameters}: {err}");
        assert!(
            err.contains("setup failed") && err.contains("not retried"),
            "{parameters}: {err}"
        );
    }
}
