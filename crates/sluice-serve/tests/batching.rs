//! Concurrent requests are batched together and get the same answers as one at a time.
//! (One test in this file: the metrics it reads are process-wide.)

#[path = "it/common/mod.rs"]
mod common;

use common::{metric, reference_en_ja, request, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_match_one_at_a_time_and_share_batches() {
    let server = TestServer::start(common::config()).await;
    let refs = reference_en_ja();

    let mut alone = Vec::new();
    for (text, _) in &refs {
        let (s, _, v) = server.translate(&request("en", "ja", &[("x", text)])).await;
        assert_eq!(s, 200);
        alone.push(v["result"][0]["text"].as_str().unwrap().to_owned());
    }
    // One at a time is transformers' answer.
    let expected: Vec<&str> = refs.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(alone, expected);
    let before = server.metrics().await;
    let batches_before = metric(&before, "sluice_batch_size_count").unwrap();
    let items_before = metric(&before, "sluice_batch_size_sum").unwrap();

    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = server.client.clone();
        let url = server.url("/translation");
        let id = format!("req-{i}");
        let body = request("en", "ja", &[(&id, &refs[i % refs.len()].0)]);
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "request {i}: {v}");
        assert_eq!(v["result"][0]["id"], format!("req-{i}"));
        assert_eq!(
            v["result"][0]["text"],
            alone[i % alone.len()],
            "request {i}"
        );
    }

    let after = server.metrics().await;
    let batches = metric(&after, "sluice_batch_size_count").unwrap() - batches_before;
    let items = metric(&after, "sluice_batch_size_sum").unwrap() - items_before;
    assert_eq!(items, 200.0);
    let mean = items / batches;
    assert!(mean > 1.0, "mean batch size {mean} over {batches} batches");
    assert_eq!(
        metric(
            &after,
            "sluice_http_requests_total{route=\"/translation\",status=\"200\"}"
        ),
        Some(210.0)
    );
    assert!(metric(&after, "sluice_generated_tokens_total").unwrap() > 200.0);
    assert_eq!(metric(&after, "sluice_queue_depth"), Some(0.0));
    server.stop().await.unwrap();
}
