//! The process-wide Prometheus recorder behind `GET /metrics`.
//!
//! `metrics` macros write to one global recorder, so it is installed once per process; servers
//! started later in the same process (tests) share it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: 1 ms to 2 minutes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Batch-size buckets in items.
const ITEMS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the recorder (once) and describes the metrics Sluice records.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("sluice_batch_size".into()), ITEMS)
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        // Histogram samples are held until they are folded into their buckets, which a scrape
        // does; a server nobody scrapes would hold every sample it ever recorded (seen as
        // resident memory growing ~10% in five minutes of a soak). Fold them every 5 s.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("sluice-metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            })
            .expect("starting the metrics upkeep thread");
        handle
    })
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Every metric the server records: name, type, labels and help (also the generated reference,
/// `docs/reference/metrics.md`).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "sluice_http_requests_total",
        "counter",
        "route, status",
        "HTTP requests answered, by route and status",
    ),
    (
        "sluice_http_request_duration_seconds",
        "histogram",
        "route",
        "Time from request to response, by route",
    ),
    (
        "sluice_queue_wait_seconds",
        "histogram",
        "model",
        "Time items waited in the queue before their batch started",
    ),
    (
        "sluice_queue_depth",
        "gauge",
        "model",
        "Items queued or being computed",
    ),
    ("sluice_batch_size", "histogram", "model", "Items per batch"),
    (
        "sluice_batch_duration_seconds",
        "histogram",
        "model",
        "Compute time per batch",
    ),
    (
        "sluice_generated_tokens_total",
        "counter",
        "model",
        "Tokens generated",
    ),
    (
        "sluice_queue_dropped_total",
        "counter",
        "model, reason",
        "Items dropped before compute, by reason (disconnected, deadline)",
    ),
    (
        "sluice_batch_failures_total",
        "counter",
        "model",
        "Batches the model failed on",
    ),
    (
        "sluice_item_failures_total",
        "counter",
        "model",
        "Items the model failed on alone, their batch answered",
    ),
];

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for &(name, kind, _, help) in METRICS {
        match kind {
            "counter" => describe_counter!(name, help),
            "gauge" => describe_gauge!(name, help),
            _ if name.ends_with("_seconds") => describe_histogram!(name, Unit::Seconds, help),
            _ => describe_histogram!(name, help),
        }
    }
}

/// `GET /metrics`: the metrics in Prometheus' text format, with its content type.
pub fn response() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        render(),
    )
        .into_response()
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// Serves `GET /metrics` on `listener` from a background thread, for one-shot commands such as
/// `sluice run` that have no server of their own; returns the address it listens on.
pub fn spawn_endpoint(listener: std::net::TcpListener) -> std::io::Result<std::net::SocketAddr> {
    install();
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = axum::Router::new()
                    .route("/metrics", axum::routing::get(|| async { response() }));
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::warn!("metrics endpoint stopped: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("metrics endpoint: {e}"),
                }
            })
        })?;
    Ok(addr)
}
