//! The `nats` sink: records published to a stream, deduplicated by key, in acknowledged rounds.

use super::*;
use crate::{Envelope, Sink, SinkError};
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream;
use bytes::Bytes;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Publishes records to a subject; each carries its key as `Nats-Msg-Id`, so JetStream drops a
/// key published again within the stream's duplicate window (a rerun, a redelivered item).
pub struct NatsSink {
    nats: Nats,
    subject: String,
    key_field: String,
    held: Vec<(String, Bytes)>,
    published: u64,
    duplicates: u64,
    /// How long a round is retried while the server does not confirm it.
    retry_for: Duration,
}

/// Publishes in rounds of this many messages, each round awaiting its acknowledgements.
pub(super) const PUBLISH_ROUND: usize = 256;

impl NatsSink {
    /// Connects and makes sure a stream keeps the subject.
    pub fn connect(spec: &NatsSinkSpec, default_key_field: &str) -> Result<Self, SinkError> {
        let nats = Nats::connect(
            spec.url.as_deref(),
            spec.credentials.as_ref(),
            "sluice-sink",
        )
        .map_err(SinkError::Destination)?;
        Self::on(nats, spec, default_key_field)
    }

    /// As [`NatsSink::connect`], on an open connection.
    pub(super) fn on(
        nats: Nats,
        spec: &NatsSinkSpec,
        default_key_field: &str,
    ) -> Result<Self, SinkError> {
        if let Some(name) = &spec.stream {
            let retention = match spec.retention.as_deref() {
                Some("workqueue") => stream::RetentionPolicy::WorkQueue,
                _ => stream::RetentionPolicy::Limits,
            };
            let window = Duration::from_secs_f64(spec.duplicate_window_s.unwrap_or(600.0));
            nats.ensure_stream(name, &spec.subject, retention, window)
                .map_err(SinkError::Destination)?;
        }
        Ok(NatsSink {
            nats,
            subject: spec.subject.clone(),
            key_field: spec
                .key_field
                .clone()
                .unwrap_or_else(|| default_key_field.into()),
            held: Vec::new(),
            published: 0,
            duplicates: 0,
            retry_for: Duration::from_secs_f64(spec.retry_for_s.unwrap_or(300.0)),
        })
    }

    /// Records published, and how many of them JetStream dropped as duplicates.
    pub fn counts(&self) -> (u64, u64) {
        (self.published, self.duplicates)
    }

    fn publish_held(&mut self) -> Result<(), SinkError> {
        if self.held.is_empty() {
            return Ok(());
        }
        // A round is sent again whole until the stream confirms all of it: the server may be
        // restarting or unreachable for a while, and each message's id makes JetStream drop
        // the copies of those it had already stored (within the stream's duplicate window).
        let started = Instant::now();
        let mut wait = Duration::from_millis(200);
        let (published, duplicates) = loop {
            match self.publish_round() {
                Ok(counts) => break counts,
                Err(e) if started.elapsed() < self.retry_for => {
                    tracing::warn!("{e}; publishing the round again in {wait:?}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(SinkError::Destination(format!(
                        "{e} (still failing after {:.0} s: retry_for_s)",
                        started.elapsed().as_secs_f64()
                    )))
                }
            }
        };
        self.held.clear();
        self.published += published;
        self.duplicates += duplicates;
        Ok(())
    }

    /// Publishes every held message and awaits their acknowledgements.
    fn publish_round(&self) -> Result<(u64, u64), String> {
        let (js, subject) = (&self.nats.js, &self.subject);
        self.nats.rt.block_on(async {
            let mut acks = Vec::with_capacity(self.held.len());
            for (key, payload) in &self.held {
                let message = Publish::build().payload(payload.clone()).message_id(key);
                let ack = js
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| format!("publishing to {subject}: {e}"))?;
                acks.push(ack);
            }
            let (mut published, mut duplicates) = (0, 0);
            for ack in acks {
                let ack = ack
                    .await
                    .map_err(|e| format!("{subject}: the stream did not confirm: {e}"))?;
                published += 1;
                duplicates += u64::from(ack.duplicate);
            }
            Ok((published, duplicates))
        })
    }
}

impl<T: Serialize> Sink<T> for NatsSink {
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        let value = crate::sink::keyed_record(&item, &self.key_field)?;
        let payload = serde_json::to_vec(&value)?;
        self.held.push((item.key.to_string(), payload.into()));
        if self.held.len() >= PUBLISH_ROUND {
            self.publish_held()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.publish_held()
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.publish_held()
    }
}
