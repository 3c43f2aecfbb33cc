//! `sluice run PIPELINE.toml` end to end with the real binary: exec stages in their own process,
//! failures and summary files, reruns after a kill, shards, and config errors with line numbers.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A JSON-lines program: doubles `n`, fails multiples of 7, sleeps `SLEEP_MS` per record.
const DOUBLE_PY: &str = r#"
import json, os, sys, time
delay = float(os.environ.get("SLEEP_MS", "0")) / 1000
for line in sys.stdin:
    r = json.loads(line)
    time.sleep(delay)
    if r["n"] % 7 == 0:
        print(json.dumps({"sluice_error": "multiple of seven"}))
    else:
        r["double"] = r["n"] * 2
        print(json.dumps(r))
    sys.stdout.flush()
"#;

fn setup(dir: &Path, items: u64, sleep_ms: u64, extra: &str) -> std::path::PathBuf {
    let input: String = (0..items)
        .map(|n| format!("{{\"id\": \"k{n}\", \"n\": {n}}}\n"))
        .collect();
    std::fs::write(dir.join("in.jsonl"), input + "{broken\n").unwrap();
    std::fs::write(dir.join("double.py"), DOUBLE_PY).unwrap();
    let config = format!(
        r#"[run]
balance_interval_ms = 200
{extra}

[source]
kind = "jsonl"
path = "{in_path}"
key = "id"

[[stage]]
kind = "exec"
name = "double"
command = ["python3", "{script}"]
env = {{ SLEEP_MS = "{sleep_ms}" }}
batch_size = 5
workers = 2

[sink]
kind = "jsonl"
path = "{out}"
part_items = 10
"#,
        in_path = dir.join("in.jsonl").display(),
        script = dir.join("double.py").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(SLUICE).args(args).output().unwrap()
}

/// Runs `sluice run PIPELINE --progress off EXTRA...`, asserts it completed (exit status 0, or 3
/// when its summary counts failed records) and returns stderr.
fn run_ok(pipeline: &Path, extra: &[&str]) -> String {
    run_ok_with(pipeline, extra, &[])
}

/// [`run_ok`] with `env` added to the command's environment.
fn run_ok_with(pipeline: &Path, extra: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .args(extra)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let failed = sluice_testkit::failed_in_summary(&stderr);
    sluice_testkit::assert_run_exit(out.status, failed, &stderr);
    stderr
}

/// Every output record by key, checking that every part file is whole JSON.
fn outputs(dir: &Path) -> HashMap<String, Vec<serde_json::Value>> {
    sluice_testkit::jsonl_parts_by(&dir.join("out"), "id")
}

#[test]
fn run_writes_outputs_failures_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = setup(dir.path(), 100, 0, "");
    let stderr = run_ok(&pipeline, &[]);
    let by_key = outputs(dir.path());
    assert_eq!(by_key.len(), 100 - 15, "{stderr}");
    assert_eq!(by_key["k3"][0]["double"], 6);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/_summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            summary["items_read"].as_u64(),
            summary["items_out"].as_u64()
        ),
        (Some(101), Some(85))
    );
    assert_eq!(summary["failed"], 16);
    let failures = std::fs::read_to_string(dir.path().join("out/_failures.jsonl")).unwrap();
    let failures: Vec<serde_json::Value> = failures
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(failures.len(), 16);
    let broken = failures
        .iter()
        .find(|f| f["stage"] == "read")
        .expect("the unreadable line is a failure");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("in.jsonl:101: not JSON"),
        "{broken}"
    );
    assert!(failures
        .iter()
        .any(|f| f["stage"] == "double" && f["key"] == "k14" && f["error"] == "multiple of seven"));

    // Same outputs in every mode; a rerun with nothing left skips everything.
    for mode in ["batch", "debug"] {
        let other = tempfile::tempdir().unwrap();
        let pipeline = setup(other.path(), 100, 0, "");
        run_ok(&pipeline, &["--mode", mode]);
        let mut a: Vec<_> = outputs(other.path())
            .into_values()
            .flatten()
            .map(|v| v.to_string())
            .collect();
        let mut b: Vec<_> = by_key.values().flatten().map(|v| v.to_string()).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{mode} mode");
    }
    let again = run_ok(&pipeline, &[]);
    assert!(again.contains("85 skipped"), "{again}");
    assert_eq!(outputs(dir.path()).len(), 85);
}

#[test]
fn a_killed_run_reruns_only_what_is_missing_and_leaves_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = setup(dir.path(), 400, 5, "");
    let mut child = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let parts = |dir: &Path| {
        std::fs::read_dir(dir.join("out"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("part-")
                })
                .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while parts(dir.path()) < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = outputs(dir.path()).len();
    assert!(
        (50..340).contains(&done_before),
        "killed after {done_before} outputs"
    );

    let stderr = run_ok(&pipeline, &[]);
    assert!(
        stderr.contains(&format!("{done_before} skipped")),
        "{stderr}"
    );
    let by_key = outputs(dir.path());
    let expected: Vec<String> = (0..400)
        .filter(|n| n % 7 != 0)
        .map(|n| format!("k{n}"))
        .collect();
    assert_eq!(by_key.len(), expected.len());
    for key in expected {
        assert_eq!(by_key.get(&key).map(|v| v.len()), Some(1), "{key} once");
    }
}

#[test]
fn the_example_pipeline_runs_as_documented() {
    // As the example's header says, from the repository root; only the model (no network here)
    // and the output directory are swapped.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let model = sluice_testkit::fixture("tiny-m2m100");
    let result = Command::new(SLUICE)
        .current_dir(&root)
        .args([
            "run",
            "examples/pipelines/translate.toml",
            "--progress",
            "off",
        ])
        .args([
            "--set",
            &format!("stage.translate.model={}", model.display()),
        ])
        .args(["--set", &format!("sink.path={}", out.path().display())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("_summary.json")).unwrap()).unwrap();
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&serde_json::json!(6), &serde_json::json!(2)),
        "{summary}"
    );
    sluice_testkit::assert_run_exit(result.status, 2, &stderr);
    assert!(stderr.contains("2 record(s) failed"), "{stderr}");
    let failures = std::fs::read_to_string(out.path().join("_failures.jsonl")).unwrap();
    assert_eq!(failures.matches("empty text").count(), 2, "{failures}");
    let parts: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
}

#[test]
fn the_audio_example_pipeline_runs_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let result = Command::new(SLUICE)
            .current_dir(&root)
            .args([
                "run",
                "examples/pipelines/audio-16k.toml",
                "--progress",
                "off",
            ])
            .args(["--set", &format!("sink.path={}", out.path().display())])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.path().join("_summary.json")).unwrap())
                .unwrap();
        let failed = summary["failed"].as_u64().unwrap();
        sluice_testkit::assert_run_exit(result.status, failed, &stderr);
        (summary, stderr)
    };
    let (summary, stderr) = run(&[]);
    assert_eq!(summary["items_out"], 7, "{summary}");
    assert_eq!(summary["audio"]["files_failed"], 4, "{summary}");
    assert!(stderr.contains("audio: 7 files decoded"), "{stderr}");
    assert!(out.path().join("music/deep/three_16k_pcm32.wav").exists());
    assert!(out.path().join("speech/tone_48k_mono.wav").exists());
    let failures = std::fs::read_to_string(out.path().join("_failures.jsonl")).unwrap();
    assert_eq!(failures.lines().count(), 4, "{failures}");

    let (again, _) = run(&[]);
    assert_eq!(
        (&again["skipped"], &again["items_out"]),
        (&7.into(), &0.into())
    );
    let (redo, _) = run(&["--no-skip-completed"]);
    assert_eq!(redo["items_out"], 7, "{redo}");
}

#[test]
fn metrics_are_served_while_the_run_lasts() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = setup(dir.path(), 150, 20, "");
    let mut child = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(url) = line.split("metrics at http://").nth(1) {
                tx.send(url.trim_end_matches("/metrics").to_string())
                    .unwrap();
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // The endpoint lives as long as the run: wait until it has counted finished items.
    let ok = r#"sluice_pipeline_items_total{stage="double",outcome="ok"} "#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        let body = sluice_testkit::http_request(addr.parse().unwrap(), "GET", "/metrics").unwrap();
        assert!(
            body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
            "{body}"
        );
        let count = body
            .lines()
            .find_map(|l| l.strip_prefix(ok))
            .map(|n| n.parse::<u64>().unwrap());
        if let Some(n) = count.filter(|&n| n > 0) {
            assert!(
                body.contains("# HELP sluice_pipeline_items_total"),
                "{body}"
            );
            assert!(
                body.contains(r#"sluice_pipeline_workers{stage="double"} 2"#),
                "{body}"
            );
            // Busy time in seconds: the batch-time histogram's sum and count.
            let sum = body
                .lines()
                .find_map(|l| {
                    l.strip_prefix(r#"sluice_pipeline_batch_seconds_sum{stage="double"} "#)
                })
                .map(|v| v.parse::<f64>().unwrap());
            assert!(sum.is_some_and(|s| s > 0.0), "{body}");
            assert!(
                body.contains("# TYPE sluice_pipeline_batch_seconds histogram"),
                "{body}"
            );
            seen = Some(n);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.is_some(), "no progress counted in /metrics");
    // The input's broken line is a failed record: the run completes with status 3.
    assert_eq!(child.wait().unwrap().code(), Some(3));
}

#[test]
fn shards_split_the_input_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = setup(dir.path(), 300, 0, "");
    for shard in ["0/3", "1/3", "2/3"] {
        run_ok(&pipeline, &["--shard", shard]);
    }
    let by_key = outputs(dir.path());
    assert_eq!(by_key.len(), (0..300).filter(|n| n % 7 != 0).count());
    assert!(by_key.values().all(|v| v.len() == 1));
    let bad = sluice(&["run", pipeline.to_str().unwrap(), "--shard", "3/3"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("0 <= INDEX < COUNT"));
}

#[test]
fn config_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = setup(dir.path(), 10, 0, "");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let cases = [
        (
            text.replace("batch_size = 5", "batch_size = 5\ncomand = 1"),
            ":10: [[stage]] 0 (exec): unknown field `comand`",
        ),
        (
            text.replace("kind = \"exec\"", "kind = \"exe\""),
            ":10: [[stage]] 0: unknown kind \"exe\"",
        ),
        (
            text.replace("workers = 2", "workers = \"many\""),
            "workers = \"many\": expected a number or \"auto\"",
        ),
        (text.replace("[sink]", "[sink\n"), ":18:"),
    ];
    for (config, expected) in cases {
        std::fs::write(&pipeline, config).unwrap();
        let out = sluice(&["run", pipeline.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
    std::fs::write(&pipeline, text).unwrap();
    let out = sluice(&[
        "run",
        pipeline.to_str().unwrap(),
        "--set",
        "stage.nope.workers=1",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stage is named \"nope\""));
}

#[test]
fn help_documents_the_exit_statuses_and_usage_errors_exit_2() {
    let out = sluice(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for status in [
        "0 everything done",
        "1 error",
        "2 usage error",
        "3 completed",
    ] {
        assert!(help.contains(status), "{status:?} missing from:\n{help}");
    }
    let out = sluice(&["run", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `sluice run` on object storage: a JSON-lines source object, Parquet parts written under a
/// prefix with the failures and summary beside them, a rerun that skips every finished key, and
/// the parts read back by a `parquet` source from the prefix. `bucket` is the store's URL
/// (`s3://data`), `env` its settings for the child processes.
fn object_storage_round_trip(
    bucket_url: &str,
    bucket: &sluice_core::storage::Location,
    env: &[(String, String)],
) {
    use sluice_core::storage::Matcher;
    let mut input: String = (0..25)
        .map(|n| format!("{{\"id\": \"k{n}\", \"n\": {n}}}\n"))
        .collect();
    input.push_str("{broken\n");
    bucket
        .write_blocking("in/records.jsonl", input.into())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let to_store = dir.path().join("to-store.toml");
    std::fs::write(
        &to_store,
        format!(
            "[source]\nkind = \"jsonl\"\npath = \"{bucket_url}/in/records.jsonl\"\nkey = \"id\"\n\n\
             [sink]\nkind = \"parquet\"\npath = \"{bucket_url}/out\"\nkey_field = \"id\"\npart_items = 4\n"
        ),
    )
    .unwrap();
    let run = |pipeline: &Path| run_ok_with(pipeline, &[], env);
    let summary = || -> serde_json::Value {
        serde_json::from_slice(&bucket.read_blocking("out/_summary.json").unwrap()).unwrap()
    };
    let parts = || {
        bucket
            .list_blocking(&Matcher::suffixes(&[".parquet"]))
            .unwrap()
    };
    run(&to_store);
    let s = summary();
    assert_eq!(
        (&s["items_out"], &s["failed"]),
        (&25.into(), &1.into()),
        "{s}"
    );
    let failures = bucket.read_blocking("out/_failures.jsonl").unwrap();
    assert!(String::from_utf8_lossy(&failures).contains("records.jsonl:26"));
    assert_eq!(parts().len(), 7, "{:?}", parts());

    // The rerun reads the keys of the parts in the store and skips them all.
    run(&to_store);
    let s = summary();
    assert_eq!(
        (&s["skipped"], &s["items_out"]),
        (&25.into(), &0.into()),
        "{s}"
    );
    assert_eq!(parts().len(), 7);

    // The table in the store as a Parquet source, read from its prefix.
    let back = dir.path().join("back.toml");
    let local = dir.path().join("local");
    std::fs::write(
        &back,
        format!(
            "[source]\nkind = \"parquet\"\npath = \"{bucket_url}/out/\"\nkey = \"id\"\n\n\
             [sink]\nkind = \"jsonl\"\npath = \"{}\"\nkey_field = \"id\"\n",
            local.display()
        ),
    )
    .unwrap();
    run(&back);
    let got = sluice_testkit::jsonl_parts_by(&local, "id");
    assert_eq!(got.len(), 25);
    assert_eq!(got["k7"], vec![serde_json::json!({"id": "k7", "n": 7})]);
}

#[test]
fn pipelines_read_and_write_s3_and_reruns_skip_what_is_there() {
    let server = sluice_testkit::S3Server::start();
    server.create_bucket("data");
    let bucket =
        sluice_core::storage::Location::parse_with("s3://data", &server.options()).unwrap();
    object_storage_round_trip("s3://data", &bucket, &server.env());
}

/// The same on Azure Blob Storage (the azurite emulator on loopback).
#[test]
fn pipelines_read_and_write_azure_blobs_and_reruns_skip_what_is_there() {
    let server = sluice_testkit::AzuriteServer::start();
    server.create_container("data");
    let bucket =
        sluice_core::storage::Location::parse_with("az://data", &server.options()).unwrap();
    object_storage_round_trip("az://data", &bucket, &server.env());
}

/// The same on Google Cloud Storage (fake-gcs-server on loopback, through the GCS client with a
/// service-account key that names the endpoint).
#[test]
fn pipelines_read_and_write_gcs_objects_and_reruns_skip_what_is_there() {
    let server = sluice_testkit::GcsServer::start();
    server.create_bucket("data");
    let bucket =
        sluice_core::storage::Location::parse_with("gs://data", &server.options()).unwrap();
    object_storage_round_trip("gs://data", &bucket, &server.env());
    // Whole parts under their final names only: no staging object was left behind.
    let names = server.list("data");
    assert!(names.iter().all(|n| !n.contains(".sluice-")), "{names:?}");
}

/// `${...}` variables in a pipeline file: the logical date (`--date`) formatted into an input
/// path, a `--var` in both paths; an undefined one is an error naming it and its line.
#[test]
fn pipeline_files_take_run_variables_and_name_an_undefined_one() {
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("in/2026/11/29.jsonl");
    std::fs::create_dir_all(day.parent().unwrap()).unwrap();
    std::fs::write(&day, "{\"id\": \"a\"}\n{\"id\": \"b\"}\n{\"id\": \"c\"}\n").unwrap();
    let pipeline = dir.path().join("daily.toml");
    std::fs::write(
        &pipeline,
        "[source]\nkind = \"jsonl\"\n# one file a day: ${date:%Y/%m/%d}\n\
         path = \"${root}/in/${date:%Y/%m/%d}.jsonl\"\nkey = \"id\"\n\n\
         [sink]\nkind = \"jsonl\"\npath = \"${root}/out/${date}\"\nkey_field = \"id\"\n",
    )
    .unwrap();
    let root = format!("root={}", dir.path().display());
    run_ok_with(&pipeline, &["--date", "2026-11-29", "--var", &root], &[]);
    let got = sluice_testkit::jsonl_parts_by(&dir.path().join("out/2026-11-29"), "id");
    assert_eq!(got.len(), 3, "{got:?}");

    let out = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--date", "2026-11-29"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("daily.toml:4: ${root} is not defined: give --var root=VALUE"),
        "{stderr}"
    );
    let out = Command::new(SLUICE)
        .args([
            "run",
            pipeline.to_str().unwrap(),
            "--date",
            "29/11/2026",
            "--var",
            &root,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--date \"29/11/2026\""),
        "{stderr}"
    );
}

/// A backfill over four dates, two at a time: each date's run reads its own input and writes
/// its own outputs; a date without input fails alone (exit 1, named); once its input is there the
/// rerun completes it and the other dates skip what they wrote.
#[test]
fn a_backfill_runs_each_date_and_reports_the_ones_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    for day in ["2026-11-01", "2026-11-02", "2026-11-04"] {
        std::fs::write(
            dir.path().join(format!("in/{day}.jsonl")),
            format!("{{\"id\": \"{day}-a\"}}\n{{\"id\": \"{day}-b\"}}\n"),
        )
        .unwrap();
    }
    let pipeline = dir.path().join("daily.toml");
    std::fs::write(
        &pipeline,
        "[source]\nkind = \"jsonl\"\npath = \"${root}/in/${date}.jsonl\"\nkey = \"id\"\n\n\
         [sink]\nkind = \"jsonl\"\npath = \"${root}/out/${date}\"\nkey_field = \"id\"\n",
    )
    .unwrap();
    let root = format!("root={}", dir.path().display());
    let backfill = || {
        Command::new(SLUICE)
            .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
            .args(["--dates", "2026-11-01..2026-11-04", "--parallel", "2"])
            .args(["--var", &root])
            .output()
            .unwrap()
    };
    let out = backfill();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[2026-11-03] failed"), "{stderr}");
    assert!(
        stderr.contains("1 of 4 dates failed: 2026-11-03"),
        "{stderr}"
    );
    let overall = stderr
        .lines()
        .find_map(|l| l.strip_prefix("backfill: "))
        .unwrap();
    let overall: serde_json::Value = serde_json::from_str(overall).unwrap();
    assert_eq!(overall["done"], 3, "{overall}");
    for day in ["2026-11-01", "2026-11-02", "2026-11-04"] {
        let got = sluice_testkit::jsonl_parts_by(&dir.path().join("out").join(day), "id");
        assert_eq!(got.len(), 2, "{day}: {got:?}");
    }

    std::fs::write(
        dir.path().join("in/2026-11-03.jsonl"),
        "{\"id\": \"late\"}\n",
    )
    .unwrap();
    let out = backfill();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        sluice_testkit::jsonl_parts_by(&dir.path().join("out/2026-11-03"), "id").len(),
        1
    );
    // The dates already done skipped their items.
    assert!(
        stderr.contains("[2026-11-01]") && stderr.contains("2 skipped"),
        "{stderr}"
    );
}

/// Receives one HTTP request on a loopback port: its request line and body, answering 200.
pub(crate) fn receive_one() -> (u16, std::thread::JoinHandle<(String, String)>) {
    use std::io::{BufRead, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        (
            request_line.trim().to_owned(),
            String::from_utf8(body).unwrap(),
        )
    });
    (port, handle)
}

/// `--push-metrics`: the run's outcome as a Pushgateway receives it, read back with
/// Prometheus' own parser (`prometheus_client`).
#[test]
fn a_run_pushes_its_outcome_to_a_pushgateway_in_the_exposition_format() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = setup(dir.path(), 40, 0, "");
    let (port, received) = receive_one();
    let out = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .args(["--date", "2026-11-30", "--push-metrics"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed = sluice_testkit::failed_in_summary(&stderr);
    sluice_testkit::assert_run_exit(out.status, failed, &stderr);
    let (request_line, body) = received.join().unwrap();
    let stem = pipeline.file_stem().unwrap().to_string_lossy();
    assert_eq!(
        request_line,
        format!("PUT /metrics/job/sluice/pipeline/{stem} HTTP/1.1")
    );
    let python = sluice_testkit::find_tool("python", "SLUICE_TEST_PYTHON");
    let parse = "import json, sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
                 out = {}\nfor family in parse(sys.stdin.read()):\n    for s in family.samples:\n        \
                 out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value\nprint(json.dumps(out))\n";
    let mut child = Command::new(python)
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "not the exposition format:\n{body}"
    );
    let samples: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(samples["sluice_run_success{}"], 1.0, "{samples}");
    // 40 records and the setup's broken line.
    assert_eq!(
        samples["sluice_run_items{\"outcome\": \"read\"}"], 41.0,
        "{samples}"
    );
    assert_eq!(
        samples["sluice_run_items{\"outcome\": \"out\"}"]
            .as_f64()
            .unwrap()
            + failed as f64,
        41.0,
        "{samples}"
    );
    assert_eq!(
        samples["sluice_run_items{\"outcome\": \"failed\"}"], failed as f64,
        "{samples}"
    );
    assert_eq!(
        samples["sluice_run_info{\"date\": \"2026-11-30\"}"], 1.0,
        "{samples}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let success = samples["sluice_run_last_success_timestamp_seconds{}"]
        .as_f64()
        .unwrap();
    assert!((now - success).abs() < 120.0, "{success} vs {now}");
    assert!(samples["sluice_run_duration_seconds{}"].as_f64().unwrap() > 0.0);
}
