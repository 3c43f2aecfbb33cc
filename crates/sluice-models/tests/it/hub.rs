//! Downloads from the hub, against a fake hub on loopback (`sluice_testkit::FakeHub`, the two
//! endpoints hf-hub calls): a gated repository needs the token and gets it in every request, and
//! sharded safetensors weights (an index and its shards) download and load as the whole file, and
//! an NLLB-200 repository (tokenizer.json, no vocab.json) downloads and loads, then from the cache.

use std::path::Path;

use candle_core::Device;
use sluice_models::m2m100::{ComputeType, GenerationOptions, TranslateTexts};
use sluice_models::source::{fetch_model, HubSettings, Token};
use sluice_models::{ModelSource, M2M100};
use sluice_testkit::FakeHub;

fn fixture() -> std::path::PathBuf {
    sluice_testkit::fixture("tiny-m2m100")
}

/// The fixture's model files (what a hub repository of it holds), without `skip`.
fn repo_files(skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    files_of(&fixture(), skip)
}

fn files_of(dir: &Path, skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !skip.contains(&name.as_str()) && name != "reference.json" {
            files.push((name, std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn settings(cache: &Path, hub: &FakeHub, token: Option<&str>) -> HubSettings {
    HubSettings {
        cache_dir: cache.to_owned(),
        endpoint: Some(hub.url().to_owned()),
        offline: false,
        progress: false,
        token: token.map(|t| Token(t.to_owned())),
    }
}

#[test]
fn an_nllb_repository_downloads_its_tokenizer_json_and_loads_then_from_the_cache() {
    let nllb = sluice_testkit::fixture("tiny-nllb");
    let hub = FakeHub::start("facebook/nllb-tiny", files_of(&nllb, &[]), None);
    let cache = tempfile::tempdir().unwrap();
    let source = ModelSource::parse("facebook/nllb-tiny");
    let dir = source.resolve(&settings(cache.path(), &hub, None)).unwrap();
    assert!(dir.join("tokenizer.json").is_file());
    assert!(!dir.join("vocab.json").exists());
    assert_eq!(translate(&dir), translate(&nllb));
    let mut offline = settings(cache.path(), &hub, None);
    offline.offline = true;
    assert_eq!(source.resolve(&offline).unwrap(), dir);
}

/// Greedy token ids of two sentences, to compare two loads of the same weights.
fn translate(dir: &Path) -> Vec<String> {
    let model = M2M100::load(dir, &Device::Cpu, ComputeType::Float32).unwrap();
    let opts = GenerationOptions {
        num_beams: Some(1),
        max_new_tokens: Some(8),
        ..GenerationOptions::default()
    };
    model
        .translate(
            &TranslateTexts::new(
                &["Hello world", "Life is like a box of chocolates."],
                "en",
                "fr",
            )
            .options(opts)
            .batch_size(2),
        )
        .unwrap()
}

#[test]
fn a_gated_repository_downloads_with_the_token_and_says_what_is_missing_without() {
    let hub = FakeHub::start(
        "org/gated",
        repo_files(&["pytorch_model.bin"]),
        Some("hf_secret"),
    );
    let cache = tempfile::tempdir().unwrap();
    let source = ModelSource::parse("org/gated");

    let err = source
        .resolve(&settings(cache.path(), &hub, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("set HF_TOKEN"), "{err}");
    let err = source
        .resolve(&settings(cache.path(), &hub, Some("wrong")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no access to org/gated"), "{err}");

    let before = hub.requests().len();
    let dir = source
        .resolve(&settings(cache.path(), &hub, Some("hf_secret")))
        .unwrap();
    let sent = &hub.requests()[before..];
    assert!(sent.len() >= 5, "{sent:?}");
    assert!(
        sent.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer hf_secret")),
        "{sent:?}"
    );
    assert_eq!(translate(&dir), translate(&fixture()));
}

#[test]
fn sharded_weights_download_and_load_as_the_whole_file() {
    // The fixture's weights split in two shards with the index transformers writes.
    let whole = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&whole).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut files = repo_files(&["pytorch_model.bin", "model.safetensors"]);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), tensors.tensor(n).unwrap()))
            .collect();
        files.push((shard.clone(), safetensors::serialize(views, None).unwrap()));
        for n in part {
            weight_map.insert(n.clone(), shard.clone().into());
        }
    }
    let index =
        serde_json::json!({"metadata": {"total_size": whole.len()}, "weight_map": weight_map});
    files.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    let hub = FakeHub::start("org/sharded", files, None);
    let cache = tempfile::tempdir().unwrap();
    let hub_settings = settings(cache.path(), &hub, None);

    let dir = ModelSource::parse("org/sharded")
        .resolve(&hub_settings)
        .unwrap();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} not downloaded");
    }
    assert_eq!(translate(&dir), translate(&fixture()));

    // Cached now: resolved again without the hub, and fetched into a directory with its shards.
    drop(hub);
    let offline = HubSettings {
        offline: true,
        ..hub_settings
    };
    let again = ModelSource::parse("org/sharded").resolve(&offline).unwrap();
    assert_eq!(again, dir);
    let to = tempfile::tempdir().unwrap();
    let fetched = fetch_model("org/sharded", "main", to.path(), &offline).unwrap();
    assert!(
        to.path().join("model.safetensors.index.json").is_file(),
        "{fetched:?}"
    );
    assert_eq!(translate(to.path()), translate(&fixture()));
}
