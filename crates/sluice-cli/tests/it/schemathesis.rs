//! schemathesis (from PyPI, in `.venv-tools/`) against a real `sluice serve` holding the tiny
//! translation model and the tone detector with a data root: `--checks all` over every operation
//! of the served `/openapi.json`, positive and negative requests, with the statuses the document
//! cannot express configured in `tests/schemathesis/schemathesis.toml`. A fixed seed keeps CI's
//! run the same from one stop to the next; the bench runs it longer with fresh seeds.

use std::process::Command;

use crate::classify::Server;

#[test]
fn the_served_openapi_document_holds_under_schemathesis() {
    let schemathesis = sluice_testkit::find_tool("schemathesis", "SLUICE_SCHEMATHESIS");
    let data = tempfile::tempdir().unwrap();
    let onnx = sluice_testkit::fixture("onnx");
    std::fs::copy(
        onnx.join("audio/tone-16k-mono.wav"),
        data.path().join("tone-16k-mono.wav"),
    )
    .unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    let translation = format!(
        "m2m100={}",
        sluice_testkit::fixture("tiny-m2m100").display()
    );
    let server = Server::start_with(
        sluice_testkit::free_port(),
        data.path(),
        &format!("tone={}", onnx.join("tone-detector").display()),
        &[],
        &["--model", &translation],
    );
    let config = sluice_testkit::repo_root().join("tests/schemathesis/schemathesis.toml");
    let work = tempfile::tempdir().unwrap();
    let examples = std::env::var("SLUICE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".into());
    let seed = std::env::var("SLUICE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261130".into());
    let out = Command::new(&schemathesis)
        .current_dir(work.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", "--checks", "all", "--workers", "2"])
        .args(["--max-examples", &examples, "--seed", &seed])
        .arg(format!("http://127.0.0.1:{}/openapi.json", server.port))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The report's summary; a failure's reproduction can be a very long line.
    let report: String = stdout
        .lines()
        .map(|l| l.chars().take(400).collect::<String>() + "\n")
        .collect();
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation was tested, and every phase ran.
    assert!(report.contains("Tested: 13"), "{report}");
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            report.contains(&format!("✅ {phase}")),
            "{phase}:\n{report}"
        );
    }
}
