//! The bodies of Sluice's fuzz targets: each takes arbitrary bytes and must return (with a
//! result or an error, never a panic, a hang or an abort) on everything that can reach it from
//! outside: request bodies of `/translation`, `/v1` and the Open Inference Protocol, text through
//! the tokenizer, audio bytes through the decoders, and pipeline files.
//!
//! Two drivers share them: the coverage-guided cargo-fuzz binaries in `fuzz/` (nightly;
//! `bench/fuzz.sh` runs them for minutes and adds what they find to `fuzz/corpus/`), and the
//! stable test `tests/corpus.rs`, which CI runs: it replays every committed corpus file and crash
//! reproduction, then mutates the corpus for a few seconds per target. CI has no nightly
//! toolchain, and a libFuzzer build of the whole dependency tree would cost it many minutes; the
//! replay keeps every input the long runs found as a regression test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A fuzz target: its name (its corpus directory) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("translation_request", translation_request),
    ("infer_request", infer_request),
    ("v2_request", v2_request),
    ("tokenizer", tokenizer),
    ("audio_decode", audio_decode),
    ("pipeline_toml", pipeline_toml),
];

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `/translation` body, parsed as the route parses it.
pub fn translation_request(data: &[u8]) {
    let _ = sluice_serve::api::parse_json::<sluice_serve::api::TranslationRequest>(data);
}

/// A `/v1/models/{name}/infer` body, parsed as the route parses it.
pub fn infer_request(data: &[u8]) {
    let _ = sluice_serve::api::parse_json::<sluice_serve::infer::InferRequest>(data);
}

/// A v2 inference body. A first line starting with `#` is its
/// `Inference-Header-Content-Length` header (so binary tensors are reached too).
pub fn v2_request(data: &[u8]) {
    let (header, body) = match data.strip_prefix(b"#") {
        Some(rest) => match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (std::str::from_utf8(&rest[..end]).ok(), &rest[end + 1..]),
            None => (None, data),
        },
        None => (None, data),
    };
    let _ = sluice_serve::server::decode_request(header, body);
}

/// Text (bytes read as lossy UTF-8) through the tiny M2M100 fixture's tokenizer, and its ids
/// back to text.
pub fn tokenizer(data: &[u8]) {
    static TOKENIZER: OnceLock<sluice_models::m2m100::M2M100Tokenizer> = OnceLock::new();
    let tokenizer = TOKENIZER.get_or_init(|| {
        let dir = repo_root().join("tests/fixtures/tiny-m2m100");
        sluice_models::m2m100::M2M100Tokenizer::from_files(
            &dir.join("vocab.json"),
            &dir.join("sentencepiece.bpe.model"),
            Some(&dir.join("tokenizer_config.json")),
        )
        .expect("the fixture's tokenizer loads")
    });
    let text = String::from_utf8_lossy(data);
    let lang = tokenizer.lang_id("en").expect("en is a language");
    if let Ok(ids) = tokenizer.encode(&text, lang) {
        let _ = tokenizer.decode(&ids);
    }
}

/// Audio bytes through the decoders; the first byte picks the file extension given as a hint.
pub fn audio_decode(data: &[u8]) {
    const HINTS: [Option<&str>; 6] = [
        None,
        Some("wav"),
        Some("flac"),
        Some("mp3"),
        Some("ogg"),
        Some("m4a"),
    ];
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let _ = sluice_audio::decode::decode(bytes, HINTS[first as usize % HINTS.len()]);
}

/// A pipeline file, checked as `sluice run` checks it.
pub fn pipeline_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sluice_pipeline::config::PipelineConfig::parse(Path::new("fuzz.toml"), text, &[]);
}
