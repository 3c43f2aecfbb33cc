//! Triton's own HTTP client (`tritonclient[http]` from PyPI, in `.venv-tools/`) against a real
//! `sluice serve` holding the tiny translation model and the tone detector: liveness, readiness,
//! server and model metadata, and inference on both models with the client's binary tensors
//! (its default) and JSON ones; answers match transformers' and onnxruntime's references.

use std::process::Command;

use serde_json::{json, Value};

use crate::classify::Server;

fn onnx(rel: &str) -> std::path::PathBuf {
    sluice_testkit::fixture("onnx").join(rel)
}

#[test]
fn tritonclient_talks_to_sluice_serve() {
    let python = sluice_testkit::find_tool("python", "SLUICE_TEST_PYTHON");
    let data = tempfile::tempdir().unwrap();
    let file = "tone-16k-mono.wav";
    std::fs::copy(onnx(&format!("audio/{file}")), data.path().join(file)).unwrap();
    let tiny = sluice_testkit::fixture("tiny-m2m100");
    let translation = format!("m2m100={}", tiny.display());
    let server = Server::start_with(
        sluice_testkit::free_port(),
        data.path(),
        &format!("tone={}", onnx("tone-detector").display()),
        &[],
        // float32: the answers are compared with transformers' token for token.
        &["--model", &translation, "--compute-type", "float32"],
    );
    let reference = sluice_testkit::tiny_m2m100_en_ja();
    let pairs: Vec<_> = reference.iter().take(3).collect();
    let request = data.path().join("request.json");
    std::fs::write(
        &request,
        json!({
            "texts": pairs.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            "source_lang": "en",
            "target_lang": "ja",
            "audio_file": onnx(&format!("audio/{file}")),
            "audio_path": file,
        })
        .to_string(),
    )
    .unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tritonclient_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("127.0.0.1:{}", server.port))
        .arg(&request)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-deps.sh)", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(
        (&got["live"], &got["ready"], &got["classifier_ready"]),
        (&json!(true), &json!(true), &json!(true))
    );
    assert_eq!(got["server"]["name"], "sluice");
    assert_eq!(got["translation_metadata"]["inputs"][0]["name"], "text");
    assert_eq!(got["classifier_metadata"]["outputs"][0]["name"], "scores");

    let want: Vec<&str> = pairs.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(got["translation_binary"], json!(want), "binary tensors");
    assert_eq!(got["translation_json"], json!(want), "JSON tensors");
    assert_eq!(got["translation_id"], "t-1");

    // onnxruntime's windows for the file (the fixture's reference).
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(onnx("tone-detector/reference.json")).unwrap(),
    )
    .unwrap();
    let windows = reference["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == format!("audio/{file}"))
        .unwrap()["windows"]
        .as_array()
        .unwrap()
        .clone();
    let scores = got["audio"]["scores"].as_array().unwrap();
    assert_eq!(scores.len(), windows.len());
    assert_eq!(got["audio_scores_dtype"], "float32");
    for (row, w) in scores.iter().zip(&windows) {
        for (a, b) in row
            .as_array()
            .unwrap()
            .iter()
            .zip(w["scores"].as_array().unwrap())
        {
            assert!(
                (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-5,
                "{row} vs {w}"
            );
        }
    }
    let starts: Vec<f64> = windows
        .iter()
        .map(|w| w["start"].as_f64().unwrap())
        .collect();
    assert_eq!(got["audio"]["start"], json!(starts));
    assert_eq!(got["audio"]["input_index"], json!(vec![0; windows.len()]));
    assert_eq!(
        got["path_scores"], got["audio"]["scores"],
        "a path and its bytes score alike"
    );

    assert_eq!(
        got["unknown_model"]["status"], "404",
        "{}",
        got["unknown_model"]
    );
    assert!(got["unknown_model"]["message"]
        .as_str()
        .unwrap()
        .contains("tone"));
}
