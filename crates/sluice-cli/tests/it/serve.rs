//! `sluice serve` and `sluice stress` as a user runs them: the real binary on a loopback port.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m2m100")
}

/// A `sluice serve` process and the lines of its log.
struct Server {
    child: Child,
    base: String,
    log: mpsc::Receiver<String>,
}

impl Server {
    async fn start(extra: &[&str]) -> Self {
        Self::start_env(extra, &[]).await
    }

    async fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let model = fixture_dir();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--max-input-tokens",
                "128",
            ])
            .args(extra)
            .env("HF_HUB_OFFLINE", "1")
            // float32 reproduces transformers' reference token for token.
            .env("SLUICE_COMPUTE_TYPE", "float32")
            .env("SLUICE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = log
                .recv_timeout(Duration::from_secs(30))
                .expect("the server logs its address");
            if let Some(rest) = line.split("listening addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            // SLUICE_LOG_FORMAT=json: one object per line, the event's fields at the top.
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    break v["addr"].as_str().unwrap().to_owned();
                }
            }
        };
        let server = Self {
            child,
            base: format!("http://{addr}"),
            log,
        };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = client.get(server.url("/readyz")).send().await {
                if r.status() == 200 {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server not ready in 30 s");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid this test spawned and has not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reference_texts() -> Vec<String> {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap(),
    )
    .unwrap();
    r["encoder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_request_in_flight_then_exits_0() {
    let mut server = Server::start(&["--max-batch-size", "8"]).await;
    let texts = reference_texts();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for r in 0..8 {
        let records: Vec<Value> = (0..64)
            .map(|i| json!({"id": format!("{r}-{i}"), "text": texts[i % texts.len()]}))
            .collect();
        let body = json!({"payload": {"fromLang": "en", "toLang": "ja", "records": records}});
        let (client, url) = (client.clone(), server.url("/translation"));
        tasks.push(tokio::spawn(async move {
            let resp = match client.post(url).json(&body).send().await {
                Ok(resp) => resp,
                // A connection still in the listen backlog when the drained server exits is
                // reset by the kernel: that request was never read, so nothing of it was lost.
                Err(e) if e.is_request() && format!("{e:?}").contains("ConnectionReset") => {
                    return (0, Value::Null, Instant::now())
                }
                Err(e) => panic!("{e:?}"),
            };
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            (status, v, Instant::now())
        }));
    }
    // Wait until the queue holds work, so the signal lands while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&m, "sluice_queue_depth").unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no request reached the queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.terminate();
    let signalled = Instant::now();
    let mut answered_after_signal = 0;
    for t in tasks {
        let (status, v, at) = t.await.unwrap();
        if status == 0 {
            continue;
        }
        // A request whose handler had not started when the signal came (on a loaded machine
        // not all eight have reached the queue) is refused as the server drains, never dropped.
        if status == 503 {
            assert_eq!(v["error"]["code"], "shutting_down", "{v}");
            continue;
        }
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["result"].as_array().unwrap().len(), 64);
        answered_after_signal += usize::from(at > signalled);
    }
    assert!(
        answered_after_signal > 0,
        "every request finished before the signal"
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let log = server.log_lines().join("\n");
    assert!(log.contains("shutdown requested: draining"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

fn stress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("stress")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_reports_success_latency_throughput_and_writes_its_files() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (csv, json_path, chart) = (
        dir.path().join("lat.csv"),
        dir.path().join("lat.json"),
        dir.path().join("lat.svg"),
    );
    let url = server.url("/translation");
    let out = stress(&[
        "--url",
        &url,
        "--pay-size",
        "4",
        "--num-req",
        "20",
        "--sleep",
        "0.005",
        "--from",
        "en",
        "--to",
        "fr",
        "--max-new-tokens",
        "10",
        "--csv",
        csv.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("20 sent, 20 succeeded (100.0%)"),
        "{stdout}"
    );
    assert!(stdout.contains("p95"), "{stdout}");
    assert!(stdout.contains("statuses:   200 × 20"), "{stdout}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(doc["summary"]["succeeded"], 20);
    assert!(
        (doc["summary"]["records_per_s"].as_f64().unwrap()
            - 4.0 * doc["summary"]["requests_per_s"].as_f64().unwrap())
        .abs()
            < 1e-6
    );
    let requests = doc["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 20);
    assert!(requests
        .iter()
        .all(|r| r["ok"] == true && r["status"] == 200));
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 21);
    assert!(csv_text.starts_with("index,start_s,latency_s,status,ok,error\n0,"));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.contains("20 requests × 4 records"));

    // Closed loop: four clients, each sending when the last answer came back.
    let out = stress(&[
        "--url",
        &url,
        "--pay-size",
        "2",
        "--num-req",
        "12",
        "--concurrency",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("12 sent, 12 succeeded (100.0%)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_against_a_tiny_queue_sees_503s_and_successes() {
    let server = Server::start(&["--queue-capacity", "2", "--max-records", "2"]).await;
    let url = server.url("/translation");
    let out = stress(&[
        "--url",
        &url,
        "--pay-size",
        "2",
        "--num-req",
        "40",
        "--sleep",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let statuses = stdout.lines().find(|l| l.starts_with("statuses:")).unwrap();
    assert!(
        statuses.contains("200 × ") && statuses.contains("503 × "),
        "{stdout}"
    );

    // Nothing answers on a closed port: every request is a connection failure, reported as such.
    drop(server);
    let out = stress(&[
        "--url",
        &url,
        "--pay-size",
        "1",
        "--num-req",
        "3",
        "--sleep",
        "0",
        "--timeout",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 sent, 0 succeeded (0.0%)"), "{stdout}");
    assert!(stdout.contains("connect × 3"), "{stdout}");
}

#[test]
fn counts_that_must_be_positive_refuse_zero_before_anything_loads() {
    for flag in [
        "--max-batch-size",
        "--queue-capacity",
        "--compute-workers",
        "--window-capacity",
        "--max-beams",
        "--max-new-tokens",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--model", "/nonexistent-model", flag, "0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} 0 was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains("zero"),
            "{flag} 0: {err}"
        );
    }
}

#[test]
fn help_shows_the_defaults_of_the_server_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let config = sluice_serve::ServeConfig::default();
    for want in [
        format!("[default: {}]", config.batch.max_items),
        format!("[default: {}]", config.batch.queue_capacity),
        format!("[default: {}]", config.limits.max_records),
        format!("[default: {}]", config.window_capacity),
    ] {
        assert!(help.contains(&want), "{want} missing from: {help}");
    }
}

#[tokio::test]
async fn json_logs_carry_an_access_line_per_request_with_its_echoed_id() {
    let server = Server::start_env(&[], &[("SLUICE_LOG_FORMAT", "json")]).await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"payload": {"fromLang": "en", "toLang": "ja",
        "records": [{"id": "1", "text": "Hello"}]}});
    let r = client
        .post(server.url("/translation"))
        .header("x-request-id", "req-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-42");
    // Without an id (or with an unusable one) the server makes one up and says which.
    let r = client.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let made = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    let r = client
        .get(server.url("/healthz"))
        .header("x-request-id", "has space")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "has space");

    let mut access = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Other access lines (the start-up health checks) may come first: wait for the two asked.
    let logged = |access: &Vec<Value>, id: &str| access.iter().any(|v| v["request_id"] == id);
    while !(logged(&access, "req-42") && logged(&access, &made))
        && std::time::Instant::now() < deadline
    {
        for line in server.log_lines() {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
            if v["target"] == "sluice::access" {
                access.push(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let translation = access
        .iter()
        .find(|v| v["request_id"] == "req-42")
        .unwrap_or_else(|| panic!("no access line for req-42 in {access:?}"));
    assert_eq!(translation["method"], "POST");
    assert_eq!(translation["route"], "/translation");
    assert_eq!(translation["status"], 200);
    assert!(translation["seconds"].as_f64().unwrap() > 0.0);
    let missing = access
        .iter()
        .find(|v| v["request_id"] == made.as_str())
        .unwrap_or_else(|| panic!("no access line for {made} in {access:?}"));
    assert_eq!(
        (&missing["route"], &missing["status"]),
        (&serde_json::json!("unmatched"), &serde_json::json!(404))
    );
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "translate",
            "--model",
            "/no/such/model",
            "--from",
            "en",
            "--to",
            "fr",
        ])
        .env("SLUICE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"json\""));
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    sluice_testkit::proc_status_kib(pid, "VmHWM").expect("VmHWM in /proc/PID/status") * 1024
}

/// A burst of 40 bodies of the maximum size (4 MiB: a small request padded with whitespace) at
/// once, against `sluice serve` with `budget` for --max-buffered-bytes: the statuses seen and
/// how far the server's peak memory rose over its peak before the burst.
async fn body_burst(budget: usize) -> (std::collections::BTreeMap<u16, usize>, u64) {
    let server = Server::start(&["--max-buffered-bytes", &budget.to_string()]).await;
    let mut body = json!({"payload": {"fromLang": "en", "toLang": "ja",
        "records": [{"id": "1", "text": "Hello"}]}})
    .to_string();
    body.push_str(&" ".repeat((4 << 20) - body.len()));
    let client = reqwest::Client::new();
    let warm = client
        .post(server.url("/translation"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let before = peak_rss(server.child.id());
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (client, url, body) = (client.clone(), server.url("/translation"), body.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                if status == 503 {
                    assert!(r.headers().contains_key("retry-after"));
                    let v: Value = r.json().await.unwrap();
                    assert!(
                        v["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("--max-buffered-bytes"),
                        "{v}"
                    );
                }
                status
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_default() += 1;
    }
    let grown = peak_rss(server.child.id()).saturating_sub(before);
    (statuses, grown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_maximum_size_bodies_stays_within_the_buffered_bytes_bound() {
    // Room for two requests at a time (each counted as twice its 4 MiB body).
    let bound = 16 << 20;
    let (statuses, grown) = body_burst(bound).await;
    eprintln!("bounded: {statuses:?}, peak RSS +{} MiB", grown >> 20);
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.get(&200).is_some_and(|n| *n > 0), "{statuses:?}");
    // The bound is on request bytes; the 40 connections' buffers (the refused bodies are read
    // and thrown away) and the allocator's slack come on top.
    let slack = 16 << 20;
    assert!(
        grown <= (bound + slack) as u64,
        "peak RSS rose by {} MiB with a bound of {} MiB ({statuses:?})",
        grown >> 20,
        bound >> 20
    );
    // The same burst with room for all of it: the memory the bound kept out.
    let (statuses, unbounded) = body_burst(1 << 30).await;
    eprintln!("unbounded: {statuses:?}, peak RSS +{} MiB", unbounded >> 20);
    assert_eq!(statuses.get(&200), Some(&40), "{statuses:?}");
    assert!(
        unbounded > grown + (32 << 20),
        "unbounded {} MiB vs bounded {} MiB",
        unbounded >> 20,
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_file_and_the_routes_left_open_are_taken_from_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "# mounted from a secret\nfirst-key\n\n  second-key  \n",
    )
    .unwrap();
    let server = Server::start(&[
        "--api-key-file",
        keys.to_str().unwrap(),
        "--api-key",
        "flag-key",
        "--open-routes",
        "health",
    ])
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut r = client.get(server.url(path));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(get("/readyz", None).await.unwrap().status(), 200);
    assert_eq!(get("/metrics", None).await.unwrap().status(), 401);
    for key in ["first-key", "second-key", "flag-key"] {
        assert_eq!(
            get("/metrics", Some(key)).await.unwrap().status(),
            200,
            "{key}"
        );
    }
    assert_eq!(
        get("/metrics", Some("# mounted from a secret"))
            .await
            .unwrap()
            .status(),
        401
    );
}

#[test]
fn an_unknown_open_route_group_is_refused_before_anything_loads() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--model",
            "/nonexistent",
            "--api-key",
            "k",
            "--open-routes",
            "health,admin",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--open-routes") && stderr.contains("\"admin\""),
        "{stderr}"
    );
}
