//! Shutdown waits for in-flight requests only up to its timeout, then gives up on them.
//! (The full drain on SIGTERM is proven with the real binary in sluice-cli's tests/serve.rs.)

use crate::common;
use std::num::NonZeroUsize;

use std::time::{Duration, Instant};

use common::{reference_records, request_owned, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_requests_still_running_after_its_timeout() {
    let mut config = common::config();
    config.batch.max_items = NonZeroUsize::new(2).unwrap();
    config.shutdown_timeout = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    let body = request_owned("en", "ja", &reference_records(512, ""));
    let (client, url) = (server.client.clone(), server.url("/translation"));
    // 256 two-record batches of beam search: far longer than the 200 ms the shutdown waits.
    let long = tokio::spawn(async move { client.post(url).json(&body).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.stop().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    // The abandoned request fails rather than hanging.
    match long.await.unwrap() {
        Err(_) => {}
        Ok(r) => assert_ne!(
            r.status(),
            200,
            "the long request finished within the shutdown"
        ),
    }
}
