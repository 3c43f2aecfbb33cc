//! Overload is answered at once: a full queue gives 503 with Retry-After, a passed deadline 504,
//! and every request that is admitted is answered.

use crate::common;
use std::num::NonZeroUsize;

use std::time::Duration;

use common::{reference_en_ja, reference_records, request, request_owned, TestServer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after_and_every_other_request_200() {
    let mut config = common::config();
    config.batch.queue_capacity = NonZeroUsize::new(2).unwrap();
    config.limits.max_records = 2;
    config.retry_after = 3;
    let server = TestServer::start(config).await;
    let refs = reference_en_ja();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = server.client.clone();
        let url = server.url("/translation");
        let (a, b) = (&refs[i % refs.len()], &refs[(i + 1) % refs.len()]);
        let body = request("en", "ja", &[("a", &a.0), ("b", &b.0)]);
        let expected = (a.1.clone(), b.1.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            (status, retry, r.json::<Value>().await.unwrap(), expected)
        }));
    }
    // Readiness holds through the burst: a full queue is reported as saturated, not unready.
    let probe = {
        let client = server.client.clone();
        let url = server.url("/readyz");
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<(u16, String), usize>::new();
            for _ in 0..200 {
                let r = client.get(&url).send().await.unwrap();
                let code = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                *seen
                    .entry((code, v["status"].as_str().unwrap().to_owned()))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        })
    };
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (status, retry, v, expected) = t.await.unwrap();
        match status {
            200 => {
                assert_eq!(v["result"][0]["text"], expected.0);
                assert_eq!(v["result"][1]["text"], expected.1);
                ok += 1;
            }
            503 => {
                assert_eq!(v["error"]["code"], "overloaded", "{v}");
                assert!(
                    v["error"]["message"].as_str().unwrap().contains("2 items"),
                    "{v}"
                );
                // The configured 3 s until the rate is measured, then the time the measured
                // rate needs to drain the queue: with two items and the tiny model, the floor.
                let secs: u64 = retry.unwrap().to_str().unwrap().parse().unwrap();
                assert!(secs == 3 || secs == 1, "Retry-After {secs}");
                busy += 1;
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert_eq!(ok + busy, 60);
    assert!(
        busy > 0,
        "a queue of 2 records took 60 concurrent requests of 2 records"
    );
    assert!(ok > 0);
    let seen = probe.await.unwrap();
    eprintln!("readiness during the burst: {seen:?}");
    assert!(
        seen.keys()
            .all(|(code, status)| *code == 200 && (status == "ready" || status == "saturated")),
        "{seen:?}"
    );
    // Once the burst is over the queue is empty and ready again.
    let r = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["queueDepth"].as_u64(), v["queueCapacity"].as_u64()),
        (Some(0), Some(2))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn passed_deadline_answers_504_and_the_server_goes_on() {
    let server = TestServer::start(common::config()).await;
    let refs = reference_en_ja();
    // 16 records: within the one batch a deadline may be promised before any batch is timed.
    let records = reference_records(16, "");
    let started = std::time::Instant::now();
    let r = server
        .client
        .post(server.url("/translation"))
        .header("x-sluice-deadline-ms", "1")
        .json(&request_owned("en", "ja", &records))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deadline_exceeded");
    assert!(started.elapsed() < Duration::from_secs(5));

    let (s, _, v) = server
        .translate(&request("en", "ja", &[("1", &refs[0].0)]))
        .await;
    assert_eq!(
        (s, v["result"][0]["text"].as_str()),
        (200, Some(refs[0].1.as_str()))
    );
    server.stop().await.unwrap();

    // A server-wide default deadline applies to requests that set none.
    let mut config = common::config();
    config.deadline = Some(Duration::from_millis(1));
    let server = TestServer::start(config).await;
    let (s, _, v) = server.translate(&request_owned("en", "ja", &records)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (504, Some("deadline_exceeded"))
    );
    // More work than the deadline allows (two batches before any rate is known, or the measured
    // rate's worth once it is): refused at once with 503, not queued.
    let many: Vec<(String, String)> = (0..65).map(|i| (i.to_string(), "hi".to_owned())).collect();
    let (s, h, v) = server.translate(&request_owned("en", "ja", &many)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("overloaded")),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    server.stop().await.unwrap();
}
