//! `sluice translate` and `sluice fetch-model` as a user runs them: the real binary, stdin/stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m2m100")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap())
        .unwrap()
}

fn sluice(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Never reach for the real hub from a test.
        .env("HF_HUB_OFFLINE", "1")
        // float32 reproduces transformers' reference; int8 tests say so in `env`.
        .env("SLUICE_COMPUTE_TYPE", "float32")
        .env_remove("SLUICE_MODEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    // Error paths exit before reading their input; the broken pipe is theirs to report.
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

/// The reference's texts, in order (the empty one included).
fn reference_texts(r: &Value) -> Vec<&str> {
    r["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect()
}

fn check_case(case_index: usize, extra: &[&str]) {
    check_case_failing(case_index, extra, None);
}

/// Translates the reference's texts as `case_index` does and checks every line; the line
/// `failing` (when given) must fail alone: an empty line, exit status 3.
fn check_case_failing(case_index: usize, extra: &[&str], failing: Option<usize>) {
    let r = reference();
    let case = &r["generation"][case_index];
    let texts = reference_texts(&r);
    let model = fixture_dir();
    let mut args = vec![
        "translate",
        "--model",
        model.to_str().unwrap(),
        "--from",
        "en",
        "--to",
        case["tgt"].as_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = sluice(&args, &(texts.join("\n") + "\n"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want_status = if failing.is_some() { 3 } else { 0 };
    assert_eq!(out.status.code(), Some(want_status), "{stderr}");
    if let Some(line) = failing {
        assert!(
            stderr.contains(&format!("line {}: a text of", line + 1))
                && stderr.contains("over the limit of"),
            "{stderr}"
        );
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), texts.len(), "one output line per input line");
    for (i, text) in texts.iter().enumerate() {
        let want = if text.is_empty() || failing == Some(i) {
            ""
        } else {
            case["texts"][i].as_str().unwrap()
        };
        assert_eq!(got[i], want, "line {i}");
    }
}

#[test]
fn translate_greedy_reproduces_reference_texts_in_order() {
    check_case(0, &["--beams", "1", "--batch-size", "3"]);
}

#[test]
fn translate_with_model_default_beam_search_reproduces_reference() {
    check_case(1, &[]);
}

#[test]
fn translate_with_all_generation_flags_reproduces_reference() {
    // Case 3: 4 beams, length penalty 1.3, early stopping "never", 5..16 new tokens.
    check_case(
        3,
        &[
            "--beams",
            "4",
            "--length-penalty",
            "1.3",
            "--early-stopping",
            "never",
            "--min-new-tokens",
            "5",
            "--max-new-tokens",
            "16",
        ],
    );
}

#[test]
fn unknown_language_fails_before_reading_input() {
    let model = fixture_dir();
    let out = sluice(
        &[
            "translate",
            "--model",
            model.to_str().unwrap(),
            "--from",
            "en",
            "--to",
            "jp",
        ],
        "hello\n",
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown language code \"jp\" (did you mean \"ja\"?)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_model_directory_is_named() {
    let out = sluice(
        &[
            "translate",
            "--model",
            "./no/such/model",
            "--from",
            "en",
            "--to",
            "fr",
        ],
        "",
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("./no/such/model") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn default_hub_model_offline_and_uncached_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    let out = sluice(
        &["translate", "--from", "en", "--to", "fr"],
        "hello\n",
        &[("HF_HUB_CACHE", cache.path().to_str().unwrap())],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("facebook/m2m100_418M") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn fetch_model_writes_a_loadable_directory_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = cache.path().join("models--sluice-test--tiny");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    let snap = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    let target = tempfile::tempdir().unwrap();
    let to = target.path().join("m");
    let env = [("HF_HUB_CACHE", cache.path().to_str().unwrap())];
    let out = sluice(
        &[
            "fetch-model",
            "sluice-test/tiny",
            "--to",
            to.to_str().unwrap(),
        ],
        "",
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sluice(
        &[
            "translate",
            "--model",
            to.to_str().unwrap(),
            "--from",
            "en",
            "--to",
            "fr",
            "--beams",
            "1",
        ],
        "Life is like a box of chocolates.\n",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        reference()["generation"][0]["texts"][0].as_str().unwrap()
    );
}

/// Token ids printed by `sluice translate --output-ids` for the reference sentences.
fn ids_with(env: &[(&str, &str)], beams: &str) -> Result<String, String> {
    let texts: Vec<String> = reference()["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let model = fixture_dir();
    let args = [
        "translate",
        "--model",
        model.to_str().unwrap(),
        "--from",
        "en",
        "--to",
        "de",
        "--beams",
        beams,
        "--output-ids",
    ];
    let out = sluice(&args, &(texts.join("\n") + "\n"), env);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn int8_gives_the_same_tokens_with_every_kernel_this_cpu_has() {
    for beams in ["1", "3"] {
        let auto = ids_with(&[("SLUICE_COMPUTE_TYPE", "int8")], beams).unwrap();
        assert_eq!(auto.lines().count(), 10);
        assert!(auto.lines().all(|l| l.starts_with("2 ")), "{auto}");
        for isa in sluice_models::int8::Isa::supported_all() {
            let forced = ids_with(
                &[
                    ("SLUICE_COMPUTE_TYPE", "int8"),
                    ("SLUICE_CPU_ISA", isa.name()),
                ],
                beams,
            )
            .unwrap();
            assert_eq!(forced, auto, "SLUICE_CPU_ISA={isa}, {beams} beams");
        }
    }
}

#[test]
fn a_kernel_the_cpu_lacks_or_an_unknown_one_is_refused_with_the_choices() {
    let err = ids_with(
        &[("SLUICE_COMPUTE_TYPE", "int8"), ("SLUICE_CPU_ISA", "sse9")],
        "1",
    )
    .unwrap_err();
    assert!(
        err.contains("SLUICE_CPU_ISA=sse9") && err.contains("portable"),
        "{err}"
    );
    let err = ids_with(&[("SLUICE_COMPUTE_TYPE", "int9")], "1").unwrap_err();
    assert!(err.contains("int8") && err.contains("float32"), "{err}");
    // float32 needs no int8 kernel: a bad SLUICE_CPU_ISA does not stop it.
    ids_with(
        &[
            ("SLUICE_COMPUTE_TYPE", "float32"),
            ("SLUICE_CPU_ISA", "sse9"),
        ],
        "1",
    )
    .unwrap();
}

/// A line that cannot be translated (here: over --max-input-tokens) fails alone: it keeps its
/// place as an empty line, its error names the line, the others are translated as always, and
/// the exit status is 3 (as a run with failed records).
#[test]
fn a_line_that_fails_fails_alone_with_exit_status_3() {
    let r = reference();
    let long = reference_texts(&r)
        .iter()
        .position(|t| t.len() > 200)
        .expect("a long text");
    check_case_failing(0, &["--beams", "1", "--max-input-tokens", "40"], Some(long));
}

#[test]
fn an_nllb_model_takes_iso_and_nllb_codes_alike_and_names_its_codes_when_refusing() {
    let dir = sluice_testkit::fixture("tiny-nllb");
    let (texts, want): (Vec<String>, Vec<String>) =
        sluice_testkit::tiny_nllb_en_fr().into_iter().unzip();
    let input: String = texts.iter().map(|t| format!("{t}\n")).collect();
    let model = dir.to_str().unwrap();
    for (from, to) in [("en", "fr"), ("eng_Latn", "fra_Latn")] {
        let out = sluice(
            &["translate", "--model", model, "--from", from, "--to", to],
            &input,
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{from}->{to}: {err}");
        let got: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(got, want, "{from}->{to}");
    }
    let out = sluice(
        &["translate", "--model", model, "--from", "en", "--to", "fra"],
        "hello\n",
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown language code \"fra\" (did you mean \"fra_Latn\"?)"),
        "{err}"
    );
}
