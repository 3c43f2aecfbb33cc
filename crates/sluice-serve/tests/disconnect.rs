//! Records of a client that has gone away are dropped from the queue and never computed.
//! (One test in this file: the metrics it reads are process-wide.)

use std::num::NonZeroUsize;
#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{metric, reference_records, request_owned, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_disconnected_clients_are_dropped_before_compute() {
    let mut config = common::config();
    config.batch.max_items = NonZeroUsize::new(4).unwrap();
    let server = TestServer::start(config).await;
    let before = server.metrics().await;
    let items_before = metric(&before, "sluice_batch_size_sum").unwrap_or(0.0);

    // A long request keeps the compute thread busy; its records are older, so they go first.
    let long = request_owned("en", "ja", &reference_records(128, "long"));
    let (client, url) = (server.client.clone(), server.url("/translation"));
    let first =
        tokio::spawn(async move { client.post(url).json(&long).send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gone = impatient
        .post(server.url("/translation"))
        .json(&request_owned("en", "ja", &reference_records(8, "gone")))
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    assert_eq!(first.await.unwrap(), 200);
    // Give the batcher one more turn after the long request.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let after = server.metrics().await;
    assert_eq!(
        metric(
            &after,
            "sluice_queue_dropped_total{model=\"m2m100\",reason=\"disconnected\"}"
        ),
        Some(8.0)
    );
    assert_eq!(
        metric(&after, "sluice_batch_size_sum").unwrap() - items_before,
        128.0
    );
    server.stop().await.unwrap();
}
