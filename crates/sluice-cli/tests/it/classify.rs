//! `sluice audio classify` and the `model` pipeline stage as a user runs them: in-process and
//! against a real `sluice serve`, the Parquet table they write, reruns, and a server restarted
//! in the middle of a run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn onnx(rel: &str) -> PathBuf {
    sluice_testkit::fixture("onnx").join(rel)
}

/// Reference windows of a fixture file: (start, end, scores).
fn reference(model: &str, file: &str) -> Vec<(f64, f64, Vec<f64>)> {
    let r: Value =
        serde_json::from_slice(&std::fs::read(onnx(model).join("reference.json")).unwrap())
            .unwrap();
    let f = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == file)
        .unwrap()
        .clone();
    f["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = w["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap());
            (
                w["start"].as_f64().unwrap(),
                w["end"].as_f64().unwrap(),
                s.collect(),
            )
        })
        .collect()
}

/// Every row of the Parquet part files in `dir`, as JSON objects.
pub(crate) fn read_table(dir: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    for part in parts {
        let file = std::fs::File::open(&part).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let mut w = arrow_json::ArrayWriter::new(Vec::new());
            w.write(&batch).unwrap();
            w.finish().unwrap();
            let v: Vec<Value> = serde_json::from_slice(&w.into_inner()).unwrap();
            rows.extend(v);
        }
    }
    rows
}

/// Rows grouped by id, each group's windows sorted by start.
fn by_id(rows: &[Value]) -> HashMap<String, Vec<(f64, f64, Vec<f64>)>> {
    let mut out: HashMap<String, Vec<(f64, f64, Vec<f64>)>> = HashMap::new();
    for r in rows {
        let scores: Vec<f64> = r["scores"]
            .as_array()
            .unwrap_or_else(|| panic!("no scores in {r}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            r["label"].is_string() && r["score"].is_number() && r["path"].is_string(),
            "{r}"
        );
        out.entry(r["id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                r["start"].as_f64().unwrap(),
                r["end"].as_f64().unwrap(),
                scores,
            ));
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn assert_close(got: &[(f64, f64, Vec<f64>)], want: &[(f64, f64, Vec<f64>)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9,
            "{what}: {g:?} {w:?}"
        );
        for (a, b) in g.2.iter().zip(&w.2) {
            assert!((a - b).abs() <= 1e-5, "{what}: {a} vs {b}");
        }
    }
}

/// A data volume: the 16 kHz fixtures, one in a subdirectory, and a corrupt file.
pub(crate) fn volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for (src, dst) in [
        ("audio/tone-16k-mono.wav", "tone.wav"),
        ("audio/noise-16k-mono.wav", "sub/noise.wav"),
        ("audio/tone-16k-stereo.wav", "stereo.wav"),
    ] {
        std::fs::copy(onnx(src), dir.path().join(dst)).unwrap();
    }
    std::fs::write(dir.path().join("broken.wav"), b"RIFF garbage").unwrap();
    dir
}

fn expected() -> Vec<(&'static str, &'static str)> {
    vec![
        ("tone.wav", "audio/tone-16k-mono.wav"),
        ("sub/noise.wav", "audio/noise-16k-mono.wav"),
        ("stereo.wav", "audio/tone-16k-stereo.wav"),
    ]
}

fn classify(source: &Path, model: &str, output: &Path, extra: &[&str]) -> (Value, String) {
    let summary = output.with_extension("summary.json");
    let out = Command::new(SLUICE)
        .args(["audio", "classify", "--progress", "off", "--source"])
        .arg(source)
        .args(["--model", model, "--output"])
        .arg(output)
        .arg("--summary")
        .arg(&summary)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap())
        .unwrap_or_else(|e| panic!("no summary ({e}): {stderr}"));
    sluice_testkit::assert_run_exit(out.status, s["failed"].as_u64().unwrap(), &stderr);
    (s, stderr)
}

fn check_table(output: &Path) {
    let rows = by_id(&read_table(output));
    assert_eq!(rows.len(), 3, "{:?}", rows.keys());
    for (id, file) in expected() {
        assert_close(&rows[id], &reference("tone-detector", file), id);
    }
}

#[test]
fn classify_in_process_writes_a_window_table_and_reruns_skip_it() {
    let data = volume();
    let out = tempfile::tempdir().unwrap();
    let table = out.path().join("results.parquet");
    let model = onnx("tone-detector");
    let (summary, _) = classify(data.path(), model.to_str().unwrap(), &table, &[]);
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&3.into(), &1.into()),
        "{summary}"
    );
    check_table(&table);
    let failures = std::fs::read_to_string(table.join("_failures.jsonl")).unwrap();
    assert!(failures.contains("broken.wav"), "{failures}");
    // A rerun classifies only the file that failed, and fails it again.
    let (summary, _) = classify(data.path(), model.to_str().unwrap(), &table, &[]);
    assert_eq!(
        (&summary["skipped"], &summary["items_out"]),
        (&3.into(), &0.into()),
        "{summary}"
    );
    check_table(&table);
    // A mistyped source is an error naming it, not an empty successful run.
    let missing = data.path().join("typo");
    let out = Command::new(SLUICE)
        .args(["audio", "classify", "--progress", "off", "--source"])
        .arg(&missing)
        .args(["--model", model.to_str().unwrap(), "--output"])
        .arg(out.path().join("other.parquet"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("typo"), "{stderr}");
    assert!(!missing.exists());
}

/// A `sluice serve` process on a fixed loopback port.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
}

impl Server {
    fn start(port: u16, data_root: &Path, extra: &[&str]) -> Self {
        let model = format!("tone={}", onnx("tone-detector").display());
        Self::start_with(port, data_root, &model, &[], extra)
    }

    pub(crate) fn start_with(
        port: u16,
        data_root: &Path,
        model: &str,
        env: &[(&str, &Path)],
        extra: &[&str],
    ) -> Self {
        let mut child = Command::new(SLUICE)
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--model", model])
            .arg("--data-root")
            .arg(data_root)
            .args(extra)
            .envs(env.iter().copied())
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the server gets ready");
            if line.contains("every model is loaded") {
                break;
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/models/tone", self.port)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn requests(&self) -> f64 {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let Ok(resp) = sluice_testkit::http_request(addr, "GET", "/metrics") else {
            return 0.0;
        };
        resp.lines()
            .filter(|l| l.starts_with("sluice_http_requests_total") && l.contains("infer"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn classify_against_a_server_sends_paths_or_data_and_matches_in_process() {
    let data = volume();
    let server = Server::start(sluice_testkit::free_port(), data.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    // Sharing the volume: paths are sent.
    let by_path = out.path().join("by-path.parquet");
    let root = data.path().to_str().unwrap();
    let (summary, _) = classify(data.path(), &server.url(), &by_path, &["--data-root", root]);
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&3.into(), &1.into()),
        "{summary}"
    );
    check_table(&by_path);
    // Not sharing it: the bytes are sent.
    let by_data = out.path().join("by-data.parquet");
    let (summary, _) = classify(data.path(), &server.url(), &by_data, &[]);
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&3.into(), &1.into()),
        "{summary}"
    );
    check_table(&by_data);
    // The corrupt file failed alone, with the server's reason.
    let failures = std::fs::read_to_string(by_data.join("_failures.jsonl")).unwrap();
    assert!(
        failures.contains("broken.wav") && failures.contains("422"),
        "{failures}"
    );
}

/// A file with more windows than the in-process stage holds (5 minutes: 599 windows at the
/// half-second hop, past its 512) has its rows written to disk as they are scored; its table is
/// the one the server's answer (held whole) makes, window for window, beside a short file's, and a
/// rerun skips both.
#[test]
fn a_long_files_rows_written_as_scored_make_the_servers_table() {
    let data = tempfile::tempdir().unwrap();
    crate::audio::write_long_wav(&data.path().join("long.wav"), 5 * 60);
    std::fs::copy(
        onnx("audio/tone-16k-mono.wav"),
        data.path().join("tone.wav"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("local.parquet");
    let model = onnx("tone-detector");
    let (summary, _) = classify(data.path(), model.to_str().unwrap(), &local, &[]);
    assert_eq!(summary["items_out"], 2, "{summary}");
    let server = Server::start(sluice_testkit::free_port(), data.path(), &[]);
    let remote = out.path().join("remote.parquet");
    let root = data.path().to_str().unwrap();
    let (summary, _) = classify(data.path(), &server.url(), &remote, &["--data-root", root]);
    assert_eq!(summary["items_out"], 2, "{summary}");
    // The same windows and the same scores (within the graph's batching noise).
    let (local_rows, remote_rows) = (by_id(&read_table(&local)), by_id(&read_table(&remote)));
    assert_eq!(local_rows["long.wav"].len(), 599, "one row per window");
    assert_eq!(local_rows.len(), 2);
    for (id, rows) in &local_rows {
        assert_close(rows, &remote_rows[id], id);
    }
    let (summary, _) = classify(data.path(), model.to_str().unwrap(), &local, &[]);
    assert_eq!(
        (&summary["skipped"], &summary["items_out"]),
        (&2.into(), &0.into()),
        "{summary}"
    );
}

#[test]
fn a_classifier_is_served_by_hub_id_from_the_cache() {
    // The hub cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/files}.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--sluice-test--tone-detector");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["sluice-model.toml", "model.onnx"] {
        std::fs::copy(onnx("tone-detector").join(f), snap.join(f)).unwrap();
    }
    let data = volume();
    let server = Server::start_with(
        sluice_testkit::free_port(),
        data.path(),
        "tone=sluice-test/tone-detector",
        &[
            ("HF_HUB_CACHE", cache.path()),
            ("HF_HUB_OFFLINE", Path::new("1")),
        ],
        &[],
    );
    let out = tempfile::tempdir().unwrap();
    let table = out.path().join("t.parquet");
    let root = data.path().to_str().unwrap();
    let (summary, _) = classify(data.path(), &server.url(), &table, &["--data-root", root]);
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&3.into(), &1.into()),
        "{summary}"
    );
    check_table(&table);
}

#[test]
fn the_remote_stage_survives_a_server_restart_without_losing_or_duplicating_items() {
    let data = tempfile::tempdir().unwrap();
    let n = 300;
    for i in 0..n {
        std::fs::copy(
            onnx("audio/noise-16k-mono.wav"),
            data.path().join(format!("clip-{i:03}.wav")),
        )
        .unwrap();
    }
    let port = sluice_testkit::free_port();
    let mut server = Server::start(port, data.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let pipeline = out.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[source]
kind = "files"
path = "{data}"
extensions = ["wav"]

[[stage]]
kind = "model"
name = "detect"
url = "{url}"
data_root = "{data}"
batch_size = 2
workers = 1
concurrency = 1

[sink]
kind = "jsonl"
path = "{out}"
key_field = "relpath"
part_items = 50
"#,
            data = data.path().display(),
            url = server.url(),
            out = out.path().join("results").display(),
        ),
    )
    .unwrap();
    let run = Command::new(SLUICE)
        .args(["run", "--progress", "off"])
        .arg(&pipeline)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let some requests through, then kill the server outright and bring it back.
    let started = Instant::now();
    while server.requests() < 10.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no requests reached the server"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(server);
    std::thread::sleep(Duration::from_millis(700));
    server = Server::start(port, data.path(), &[]);
    let result = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        server.requests() > 0.0,
        "the restarted server answered the rest"
    );
    let mut keys = HashMap::new();
    for entry in std::fs::read_dir(out.path().join("results")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "jsonl")
            && p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        {
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["result"]["windows"].as_array().unwrap().len(), 1, "{v}");
                *keys
                    .entry(v["relpath"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
        }
    }
    assert_eq!(keys.len(), n, "every item is in the output: {stderr}");
    assert!(keys.values().all(|&c| c == 1), "no item is written twice");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results/_summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&n.into(), &0.into()),
        "{summary}"
    );
}

#[test]
fn the_remote_stage_waits_out_503s_as_retry_after_asks() {
    let data = volume();
    std::fs::remove_file(data.path().join("broken.wav")).unwrap();
    // The queue holds six windows (one long file's) and a batch waits 300 ms for company, so
    // requests arriving together are refused with 503 and Retry-After: 1.
    let server = Server::start(
        sluice_testkit::free_port(),
        data.path(),
        &[
            "--window-capacity",
            "6",
            "--max-wait-ms",
            "300",
            "--retry-after",
            "1",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let table = out.path().join("t.parquet");
    let started = Instant::now();
    let (summary, _) = classify(
        data.path(),
        &server.url(),
        &table,
        &[
            "--batch-size",
            "1",
            "--workers",
            "3",
            "--data-root",
            data.path().to_str().unwrap(),
        ],
    );
    let took = started.elapsed();
    assert_eq!(
        (&summary["items_out"], &summary["failed"]),
        (&3.into(), &0.into()),
        "{summary}"
    );
    check_table(&table);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let metrics = sluice_testkit::http_request(addr, "GET", "/metrics").unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_http_requests_total") && l.contains("status=\"503\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused > 0.0, "the queue refused some requests: {metrics}");
    assert!(
        took >= Duration::from_secs(1),
        "the stage waited Retry-After: {took:?}"
    );
}

#[test]
fn classify_writes_its_table_to_object_storage_and_reruns_skip_it() {
    use sluice_core::storage::{Location, Matcher};
    let server = sluice_testkit::S3Server::start();
    server.create_bucket("scores");
    let data = volume();
    let model = onnx("tone-detector");
    let run = || {
        let out = Command::new(SLUICE)
            .args(["audio", "classify", "--progress", "off", "--source"])
            .arg(data.path())
            .args([
                "--model",
                model.to_str().unwrap(),
                "--output",
                "s3://scores/table",
            ])
            .envs(server.env())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // broken.wav fails every time.
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        stderr
    };
    run();
    let bucket = Location::parse_with("s3://scores", &server.options()).unwrap();
    let parts = bucket
        .list_blocking(&Matcher::suffixes(&[".parquet"]))
        .unwrap();
    assert_eq!(parts.len(), 1, "{parts:?}");
    let local = tempfile::tempdir().unwrap();
    let table = local.path().join("table");
    std::fs::create_dir_all(&table).unwrap();
    let part = bucket.read_blocking(&parts[0].rel).unwrap();
    std::fs::write(table.join("part-0.parquet"), part).unwrap();
    check_table(&table);
    let failures = bucket.read_blocking("table/_failures.jsonl").unwrap();
    assert!(String::from_utf8_lossy(&failures).contains("broken.wav"));
    let stderr = run();
    assert!(stderr.contains("3 skipped"), "{stderr}");
}

/// A remote model stage whose server has no such model, or wants a key the stage lacks, stops
/// the run after its first setup instead of restarting workers; with `api_key_env` naming the
/// key it runs.
#[test]
fn a_remote_stage_fails_fast_on_a_missing_model_or_key_and_sends_its_key() {
    let data = volume();
    let server = Server::start(
        sluice_testkit::free_port(),
        data.path(),
        &["--api-key", "k-1"],
    );
    let out = tempfile::tempdir().unwrap();
    let run = |url: String, key_env: &str| {
        let pipeline = out.path().join("p.toml");
        std::fs::write(
            &pipeline,
            format!(
                "[source]\nkind = \"files\"\npath = \"{data}\"\nextensions = [\"wav\"]\n\n\
                 [[stage]]\nkind = \"model\"\nname = \"detect\"\nurl = \"{url}\"\n{key_env}\
                 workers = 2\n\n[sink]\nkind = \"jsonl\"\npath = \"{out}\"\nkey_field = \"relpath\"\n",
                data = data.path().display(),
                out = out.path().join("results").display(),
            ),
        )
        .unwrap();
        let started = Instant::now();
        let done = Command::new(SLUICE)
            .args(["run", "--progress", "off"])
            .arg(&pipeline)
            .env("TONE_KEY", "k-1")
            .output()
            .unwrap();
        (done, started.elapsed())
    };
    let base = format!("http://127.0.0.1:{}/v1/models", server.port);
    let (done, took) = run(format!("{base}/nosuch"), "api_key_env = \"TONE_KEY\"\n");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("serves no model \"nosuch\" (it serves tone)")
            && stderr.contains("not retried"),
        "{stderr}"
    );
    assert!(!stderr.contains("restarting worker"), "{stderr}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let (done, _) = run(format!("{base}/tone"), "");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs an API key"), "{stderr}");
    assert!(!stderr.contains("restarting worker"), "{stderr}");
    let (done, _) = run(format!("{base}/tone"), "api_key_env = \"TONE_KEY\"\n");
    let stderr = String::from_utf8_lossy(&done.stderr);
    // The corrupt file fails alone (exit 3); the others are scored.
    assert_eq!(done.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(" 3 out"), "{stderr}");
}
