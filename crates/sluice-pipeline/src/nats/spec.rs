//! The `nats` source and sink sections of a pipeline file, read and checked.

use crate::section::{section, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;

/// `[source] kind = "nats"`: the work stream and the consumer workers share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    /// Server URL (default: `$NATS_URL`, else [`DEFAULT_URL`](super::DEFAULT_URL)).
    pub url: Option<String>,
    /// A `.creds` file (JWT + NKey) for servers that require one.
    pub credentials: Option<PathBuf>,
    /// The stream (created with work-queue retention if missing).
    pub stream: String,
    /// The subject items are published on.
    pub subject: String,
    /// The durable pull consumer every worker of this pipeline shares.
    pub consumer: String,
    /// The record field naming each item (default: the `Nats-Msg-Id` header, else the stream
    /// sequence).
    pub key: Option<String>,
    /// Messages per pull.
    #[serde(default = "default_fetch")]
    pub fetch: usize,
    /// Most messages one worker holds unacknowledged (default: twice `fetch`), so that the
    /// others get their share and a stopping worker has little to finish.
    pub max_in_flight: Option<usize>,
    /// Seconds without a sign of life after which the server redelivers a worker's messages.
    #[serde(default = "default_ack_wait")]
    pub ack_wait_s: f64,
    /// Deliveries of a failing item before it is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Where dead items go (default `<stream>.dead`, kept by a stream `<stream>-dead` created if
    /// missing).
    pub dead_letter: Option<String>,
    /// Delay before a failed item is redelivered, doubled at each delivery (at most a minute).
    #[serde(default = "default_retry_delay")]
    pub retry_delay_ms: u64,
    /// Longest an output waits before it is written and its input acked.
    #[serde(default = "default_flush")]
    pub flush_ms: u64,
}

fn default_fetch() -> usize {
    64
}

fn default_ack_wait() -> f64 {
    30.0
}

fn default_max_deliver() -> u32 {
    5
}

fn default_retry_delay() -> u64 {
    1000
}

fn default_flush() -> u64 {
    1000
}

impl NatsSource {
    /// Reads `[source]` (without its `kind`) and checks the settings fit together.
    pub fn parse(table: &toml::Table, place: &str) -> Result<Self, ConfigError> {
        let spec: NatsSource = section(table, "[source] (nats)", place)?;
        let bad = |m: String| Err(ConfigError::invalid(place, "[source] (nats)", m));
        if spec.fetch == 0 || spec.max_deliver == 0 || spec.max_in_flight == Some(0) {
            return bad("fetch, max_in_flight and max_deliver must be at least 1".into());
        }
        if spec.ack_wait_s.is_nan() || spec.ack_wait_s < 1.0 {
            return bad(format!(
                "ack_wait_s = {}: must be at least 1",
                spec.ack_wait_s
            ));
        }
        if spec.flush_ms as f64 >= spec.ack_wait_s * 500.0 {
            return bad(format!(
                "flush_ms = {} must be under half of ack_wait_s, or outputs would wait past \
                 their redelivery",
                spec.flush_ms
            ));
        }
        for (what, name) in [("stream", &spec.stream), ("consumer", &spec.consumer)] {
            if name.is_empty() || name.contains(['.', ' ', '*', '>', '/', '\\']) {
                return bad(format!(
                    "{what} {name:?}: names cannot be empty or hold . * > / \\ or spaces"
                ));
            }
        }
        if spec.subject.is_empty() || spec.subject.contains(' ') {
            return bad(format!("subject {:?} is not a subject", spec.subject));
        }
        Ok(spec)
    }

    pub(super) fn max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or(2 * self.fetch)
    }

    pub(super) fn dead_subject(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dead", self.stream))
    }
}

/// `[sink] kind = "nats"`: records published to a subject, deduplicated by key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkSpec {
    /// Server URL (default: `$NATS_URL`, else [`DEFAULT_URL`](super::DEFAULT_URL)).
    pub url: Option<String>,
    /// A `.creds` file for servers that require one.
    pub credentials: Option<PathBuf>,
    /// The subject records are published on.
    pub subject: String,
    /// A stream that keeps the subject, created if missing (otherwise one must exist).
    pub stream: Option<String>,
    /// `limits` (default) or `workqueue` (for a stream that workers consume) when created.
    pub retention: Option<String>,
    /// Seconds within which a re-published key is dropped, when the stream is created.
    pub duplicate_window_s: Option<f64>,
    /// The record field that holds the key (added when missing).
    pub key_field: Option<String>,
    /// Seconds a round of messages is published again while the server does not confirm it (a
    /// restart, a lost connection) before the run fails; default 300.
    pub retry_for_s: Option<f64>,
}

impl NatsSinkSpec {
    /// Reads `[sink]` (without its `kind`).
    pub fn parse(table: &toml::Table, place: &str) -> Result<Self, ConfigError> {
        let spec: NatsSinkSpec = section(table, "[sink] (nats)", place)?;
        if let Some(r) = &spec.retention {
            if r != "limits" && r != "workqueue" {
                return Err(ConfigError::invalid(
                    place,
                    "[sink] (nats)",
                    format!("retention = {r:?}: expected \"limits\" or \"workqueue\""),
                ));
            }
        }
        Ok(spec)
    }
}
