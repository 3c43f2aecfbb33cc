//! Bad model directories and bad requests get errors that name the problem.

use std::path::{Path, PathBuf};

use candle_core::Device;
use sluice_models::m2m100::{ComputeType, GenerationOptions, TranslateTexts};
use sluice_models::source::{fetch_model, HubSettings};
use sluice_models::{ModelSource, M2M100};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m2m100")
}

fn copy_fixture(skip: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if !skip.contains(&name.as_str()) {
            std::fs::copy(&p, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

fn load_err(dir: &Path) -> String {
    M2M100::load(dir, &Device::Cpu, ComputeType::Auto)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_directory_is_named() {
    let err = load_err(Path::new("/nonexistent/model"));
    assert!(
        err.contains("/nonexistent/model") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn missing_vocab_is_named_with_the_layout() {
    let dir = copy_fixture(&["vocab.json"]);
    let err = load_err(dir.path());
    assert!(
        err.contains("no vocab.json") && err.contains("sentencepiece.bpe.model"),
        "{err}"
    );
}

#[test]
fn missing_weights_are_named() {
    let dir = copy_fixture(&["model.safetensors", "pytorch_model.bin"]);
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn config_of_another_architecture_is_refused() {
    let dir = copy_fixture(&[]);
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "marian", "vocab_size": 10}"#,
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("\"marian\"") && err.contains("not M2M100"),
        "{err}"
    );
}

#[test]
fn malformed_config_is_refused_with_the_reason() {
    let dir = copy_fixture(&[]);
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("not valid JSON"),
        "{err}"
    );
}

#[test]
fn truncated_weights_are_refused() {
    let dir = copy_fixture(&[]);
    let w = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unknown_language_names_the_code_and_suggests_one() {
    let m = M2M100::load(&fixture_dir(), &Device::Cpu, ComputeType::Auto).unwrap();
    let err = m
        .translate(&TranslateTexts::new(&["hi"], "en", "jp").batch_size(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"jp\"") && err.contains("did you mean \"ja\"?"),
        "{err}"
    );
    assert!(err.contains("zu") && err.contains("100 codes"), "{err}");
}

#[test]
fn zero_new_tokens_is_refused() {
    let m = M2M100::load(&fixture_dir(), &Device::Cpu, ComputeType::Auto).unwrap();
    let opts = GenerationOptions {
        max_new_tokens: Some(0),
        ..Default::default()
    };
    let err = m
        .translate(
            &TranslateTexts::new(&["hi"], "en", "fr")
                .options(opts)
                .batch_size(1),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_new_tokens"), "{err}");
}

/// Lays the fixture out as the hub cache does: refs/main -> snapshots/<commit>/<files>.
fn fake_hub_cache(repo: &str) -> tempfile::TempDir {
    fake_hub_cache_of(repo, &fixture_dir())
}

fn fake_hub_cache_of(repo: &str, fixture: &Path) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let folder = cache
        .path()
        .join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), commit).unwrap();
    let snap = folder.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    cache
}

fn settings(cache: &Path, offline: bool) -> HubSettings {
    HubSettings {
        cache_dir: cache.to_owned(),
        // A closed loopback port: any attempt to reach "the hub" fails at once, locally.
        endpoint: Some("http://127.0.0.1:9".to_owned()),
        offline,
        progress: false,
        token: None,
    }
}

#[test]
fn hub_id_resolves_from_the_cache_without_network() {
    let cache = fake_hub_cache("sluice-test/tiny-m2m100");
    let source = ModelSource::parse("sluice-test/tiny-m2m100");
    for offline in [true, false] {
        let dir = source.resolve(&settings(cache.path(), offline)).unwrap();
        assert!(dir.join("config.json").is_file());
        M2M100::load(&dir, &Device::Cpu, ComputeType::Auto).unwrap();
    }
}

#[test]
fn a_classifier_hub_id_resolves_to_its_spec_and_graph() {
    let fixture = fixture_dir().join("../onnx/tone-detector");
    let cache = fake_hub_cache_of("sluice-test/tone-detector", &fixture);
    let source = ModelSource::parse("sluice-test/tone-detector");
    let dir = source.resolve(&settings(cache.path(), true)).unwrap();
    let classifier = sluice_models::classifier::AudioClassifier::load(&dir).unwrap();
    assert_eq!(classifier.spec().labels, ["noise", "tone", "sweep"]);
    let to = tempfile::tempdir().unwrap();
    let files = fetch_model(
        "sluice-test/tone-detector",
        "main",
        to.path(),
        &settings(cache.path(), true),
    )
    .unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    sluice_models::classifier::AudioClassifier::load(to.path()).unwrap();
}

#[test]
fn offline_hub_id_not_in_cache_fails_fast_saying_so() {
    let cache = tempfile::tempdir().unwrap();
    let err = ModelSource::parse("facebook/m2m100_418M")
        .resolve(&settings(cache.path(), true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("sluice fetch-model"),
        "{err}"
    );
}

#[test]
fn unreachable_hub_fails_fast_with_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let err = ModelSource::parse("facebook/m2m100_418M")
        .resolve(&settings(cache.path(), false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Hugging Face hub") && err.contains("fetch-model"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");
    // "Fast" means no retry loop: a refused local connection answers within seconds.
    assert!(start.elapsed().as_secs() < 30);
}

#[test]
fn fetch_model_copies_cached_files_into_a_directory() {
    let cache = fake_hub_cache("sluice-test/tiny-m2m100");
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join("model");
    let files = fetch_model(
        "sluice-test/tiny-m2m100",
        "main",
        &target,
        &settings(cache.path(), false),
    )
    .unwrap();
    assert!(files.iter().any(|f| f.ends_with("model.safetensors")));
    assert!(!std::fs::read_dir(&target).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
    M2M100::load(&target, &Device::Cpu, ComputeType::Auto).unwrap();
}

#[test]
fn a_generation_setting_sluice_would_not_follow_is_refused_at_load_by_name() {
    let dir = copy_fixture(&[]);
    let path = dir.path().join("generation_config.json");
    let mut generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Neutral values, as older config.json files write them, load.
    for (field, neutral) in [
        ("no_repeat_ngram_size", serde_json::json!(0)),
        ("repetition_penalty", serde_json::json!(1.0)),
        ("bad_words_ids", serde_json::json!(null)),
        ("do_sample", serde_json::json!(false)),
    ] {
        generation[field] = neutral;
    }
    std::fs::write(&path, generation.to_string()).unwrap();
    M2M100::load(dir.path(), &Device::Cpu, ComputeType::Float32).unwrap();
    for (field, value) in [
        ("no_repeat_ngram_size", serde_json::json!(3)),
        ("repetition_penalty", serde_json::json!(1.2)),
        ("bad_words_ids", serde_json::json!([[5]])),
        ("do_sample", serde_json::json!(true)),
    ] {
        let mut changed = generation.clone();
        changed[field] = value.clone();
        std::fs::write(&path, changed.to_string()).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains(&format!(
                "generation setting {field} = {value} is not supported"
            )) && err.contains("generation_config.json"),
            "{field}: {err}"
        );
    }
}
