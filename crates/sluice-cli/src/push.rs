//! `--push-metrics URL`: a batch run's outcome pushed to a Prometheus Pushgateway when it ends
//! (the standard pattern for jobs that are gone before a scrape would find them), so a schedule
//! can alert on a run that failed or stopped succeeding. The group is
//! `/metrics/job/JOB/pipeline/NAME` (the file's stem), replaced on every push (`PUT`).

use std::fmt::Write;

/// What a finished run reports.
pub struct Outcome<'a> {
    /// The summary, when the run got as far as one.
    pub summary: Option<&'a sluice_pipeline::RunSummary>,
    /// Whether the run completed (failed records included).
    pub completed: bool,
    /// The run's logical date, as a label.
    pub date: Option<&'a str>,
}

/// Every metric a run pushes: name, type, labels and help (also the generated reference).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "sluice_run_last_completion_timestamp_seconds",
        "gauge",
        "",
        "When the run ended (Unix seconds), however it ended",
    ),
    (
        "sluice_run_last_success_timestamp_seconds",
        "gauge",
        "",
        "When the run last completed (Unix seconds; failed records included)",
    ),
    (
        "sluice_run_success",
        "gauge",
        "",
        "1 when the run completed, 0 when it failed or was aborted",
    ),
    (
        "sluice_run_duration_seconds",
        "gauge",
        "",
        "Wall-clock seconds of the run",
    ),
    (
        "sluice_run_items",
        "gauge",
        "outcome",
        "Items of the run by outcome",
    ),
    ("sluice_run_info", "gauge", "date", "The run's logical date"),
];

/// The `# HELP` and `# TYPE` lines of metric `name`.
fn head(name: &str) -> String {
    let help = METRICS.iter().find(|m| m.0 == name).map_or("", |m| m.3);
    format!("# HELP {name} {help}\n# TYPE {name} gauge")
}

/// The metrics in Prometheus' text exposition format.
pub fn exposition(outcome: &Outcome, now_seconds: f64) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, value: f64| {
        let _ = writeln!(out, "{}\n{name} {value}", head(name));
    };
    gauge("sluice_run_last_completion_timestamp_seconds", now_seconds);
    if outcome.completed {
        gauge("sluice_run_last_success_timestamp_seconds", now_seconds);
    }
    let success = if outcome.completed { 1.0 } else { 0.0 };
    gauge("sluice_run_success", success);
    if let Some(s) = outcome.summary {
        gauge("sluice_run_duration_seconds", s.seconds);
        let _ = writeln!(out, "{}", head("sluice_run_items"));
        for (outcome, n) in [
            ("read", s.items_read),
            ("skipped", s.skipped),
            ("out", s.items_out),
            ("failed", s.failed),
        ] {
            let _ = writeln!(out, "sluice_run_items{{outcome=\"{outcome}\"}} {n}");
        }
    }
    if let Some(date) = outcome.date {
        let _ = writeln!(
            out,
            "{}\nsluice_run_info{{date=\"{date}\"}} 1",
            head("sluice_run_info")
        );
    }
    out
}

/// The group URL for `base` (the gateway), `job` and the pipeline file's name.
pub fn group_url(base: &str, job: &str, pipeline: &std::path::Path) -> String {
    let name = pipeline
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    let segment = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{}/metrics/job/{}/pipeline/{}",
        base.trim_end_matches('/'),
        segment(job),
        segment(&name)
    )
}

/// Pushes `body` to `url`; a gateway that cannot be reached is reported, and fails the command,
/// since a schedule relying on it would otherwise alert on silence.
pub fn push(url: &str, body: String) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let response = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?
            .put(url)
            .header("content-type", "text/plain; version=0.0.4")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("pushing metrics to {url}: {status}: {text}");
        }
        Ok(())
    })
}
