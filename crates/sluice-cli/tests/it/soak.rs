//! A soak: `sluice serve` (tiny translation model and tone detector) under mixed translation and
//! inference traffic at twice the rate it was measured to serve, for 20 s of warm-up
//! (`SLUICE_SOAK_WARMUP_SECONDS`) and then `SLUICE_SOAK_SECONDS` (60 by default; `bench/soak.sh`
//! runs it longer). Every request must be
//! answered (200, or 503/504 when refused), resident memory must not grow more than 10% between
//! the second and the last quarter, and no file descriptor may be left behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::classify::Server;

fn proc_status(pid: u32, field: &str) -> u64 {
    sluice_testkit::proc_status_kib(pid, field)
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The two kinds of request, alternated.
struct Traffic {
    client: reqwest::Client,
    base: String,
    audio: String,
    texts: Vec<String>,
    n: AtomicU64,
}

impl Traffic {
    async fn send(&self) -> Result<u16, String> {
        let i = self.n.fetch_add(1, Ordering::Relaxed) as usize;
        let request = if i.is_multiple_of(2) {
            let text = &self.texts[i / 2 % self.texts.len()];
            self.client
                .post(format!("{}/translation", self.base))
                .json(&json!({
                    "payload": {"fromLang": "en", "toLang": "ja",
                        "records": [{"id": "a", "text": text}, {"id": "b", "text": text}]}
                }))
        } else {
            self.client
                .post(format!("{}/v1/models/tone/infer", self.base))
                .json(&json!({"inputs": [{"id": "x", "data": self.audio}]}))
        };
        let r = request
            .header("x-sluice-deadline-ms", "5000")
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.map_err(|e| format!("{status}: {e}"))?;
        match status {
            200 => Ok(status),
            503 | 504 if body["error"]["code"].is_string() => Ok(status),
            other => Err(format!("{other}: {body}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_at_twice_capacity_answers_everything_without_growing() {
    let seconds: u64 = std::env::var("SLUICE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let data = tempfile::tempdir().unwrap();
    let tiny = sluice_testkit::fixture("tiny-m2m100");
    let onnx = sluice_testkit::fixture("onnx");
    let server = Server::start_with(
        sluice_testkit::free_port(),
        data.path(),
        &format!("tone={}", onnx.join("tone-detector").display()),
        &[],
        &[
            "--model",
            &format!("m2m100={}", tiny.display()),
            "--queue-capacity",
            "64",
            "--window-capacity",
            "256",
        ],
    );
    let pid = server.pid();
    let audio = std::fs::read(onnx.join("audio/tone-16k-mono.wav")).unwrap();
    let traffic = Arc::new(Traffic {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{}", server.port),
        audio: base64::engine::general_purpose::STANDARD.encode(audio),
        // The texts within the tiny model's 48 positions (the fixture also has a longer one).
        texts: sluice_testkit::tiny_m2m100_en_ja()
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| s.len() < 80)
            .collect(),
        n: AtomicU64::new(0),
    });

    // Capacity: what eight clients, each waiting for its answer, get through in 3 s.
    let measure = Instant::now();
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (traffic, served) = (traffic.clone(), served.clone());
            tokio::spawn(async move {
                while measure.elapsed() < Duration::from_secs(3) {
                    if traffic.send().await == Ok(200) {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let capacity = served.load(Ordering::Relaxed) as f64 / measure.elapsed().as_secs_f64();
    assert!(capacity > 1.0, "{capacity} requests/s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = open_fds(pid);

    // The soak: requests sent at twice that rate whatever the answers, memory sampled each
    // second.
    let rate = 2.0 * capacity;
    let start = Instant::now();
    // The first seconds at full load grow the allocator's pools and the runtime's threads to
    // their working size (64 to ~100 MiB, measured); the quarters are of the time after that.
    let warmup = Duration::from_secs(
        std::env::var("SLUICE_SOAK_WARMUP_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let measured = Duration::from_secs(seconds);
    let total = warmup + measured;
    let mut sent = Vec::new();
    let mut rss = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut k = 0u64;
    while start.elapsed() < total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let t = traffic.clone();
        sent.push(tokio::spawn(async move { t.send().await }));
        k += 1;
        if start.elapsed() >= next_sample {
            rss.push((start.elapsed(), proc_status(pid, "VmRSS")));
            next_sample += Duration::from_secs(1);
        }
    }
    let mut statuses = BTreeMap::<String, u64>::new();
    for t in sent {
        let key = match t.await.unwrap() {
            Ok(s) => s.to_string(),
            Err(e) => e,
        };
        *statuses.entry(key).or_default() += 1;
    }
    drop(traffic);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = open_fds(pid);

    let quarter = |q: u32| -> Vec<u64> {
        rss.iter()
            .filter(|(t, _)| {
                *t >= warmup + measured * q / 4 && *t < warmup + measured * (q + 1) / 4
            })
            .map(|(_, kib)| *kib)
            .collect()
    };
    let (second, last) = (median(quarter(1)), median(quarter(3)));
    let summary = json!({
        "seconds": seconds,
        "warmup_seconds": warmup.as_secs(),
        "capacity_per_s": capacity,
        "offered_per_s": rate,
        "requests": k,
        "statuses": statuses,
        "rss_kib_second_quarter": second,
        "rss_kib_last_quarter": last,
        "peak_rss_kib": proc_status(pid, "VmHWM"),
        "fds_before": fds_before,
        "fds_after": fds_after,
    });
    println!("soak: {summary}");
    let curve: Vec<String> = rss
        .iter()
        .step_by(5)
        .map(|(t, kib)| format!("{}s:{}M", t.as_secs(), kib >> 10))
        .collect();
    println!("soak RSS every 5 s: {}", curve.join(" "));
    assert!(
        statuses
            .keys()
            .all(|s| ["200", "503", "504"].contains(&s.as_str())),
        "{summary}"
    );
    assert!(statuses.get("200").is_some_and(|n| *n > 0), "{summary}");
    assert!(
        statuses.get("503").is_some_and(|n| *n > 0) || statuses.get("504").is_some_and(|n| *n > 0),
        "twice the capacity was refused nothing: {summary}"
    );
    assert!(last * 10 <= second * 11, "memory grew: {summary}");
    assert!(
        fds_after <= fds_before + 2,
        "descriptors left open: {summary}"
    );
}
