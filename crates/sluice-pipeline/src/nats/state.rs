//! The bookkeeping of a NATS worker, without I/O: what a pulled message becomes, which message
//! settles which finished item, and how a failed item is retried. `worker.rs` does the talking
//! (pull, ack, nak, dead-letter publish) and asks this module what to do, so the decisions are
//! unit-tested here without a server.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::keys::key_text;
use crate::sink::Completed;
use crate::stages::Record;

use super::NatsSource;

/// A pulled message as the decisions need it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery<'a> {
    /// The message body.
    pub payload: &'a [u8],
    /// Its `Nats-Msg-Id` header, when it has one.
    pub msg_id: Option<&'a str>,
    /// How many times the server has delivered it (1 the first time).
    pub delivered: u64,
    /// Its sequence in the stream.
    pub sequence: u64,
}

/// What to do with a pulled message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Intake {
    /// Hand it to the pipeline as this keyed record.
    Admit {
        /// The item's key.
        key: String,
        /// The record.
        record: Record,
    },
    /// Publish it to the dead-letter subject with why, and ack it.
    DeadLetter {
        /// Why.
        error: String,
        /// Where it failed: `read` or `worker`.
        stage: &'static str,
    },
    /// A redelivered item whose output is already written: ack it only.
    AlreadyDone,
}

/// What to do with the message of an item that failed in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// Hand it back for redelivery after this delay.
    RetryAfter(Duration),
    /// It has had its deliveries: dead-letter it.
    DeadLetter,
}

/// Decides what a pulled message becomes; `done` tells which keys the outputs already hold
/// (read for pulls that brought redelivered messages).
pub(crate) fn intake(source: &NatsSource, m: Delivery, done: Option<&Completed>) -> Intake {
    if m.delivered > u64::from(source.max_deliver) {
        return Intake::DeadLetter {
            error: format!(
                "delivered {} times without an acknowledgement: the workers holding it stopped",
                m.delivered - 1
            ),
            stage: "worker",
        };
    }
    let dead = |error: String| Intake::DeadLetter {
        error,
        stage: "read",
    };
    let record: Record = match serde_json::from_slice(m.payload) {
        Ok(r @ serde_json::Value::Object(_)) => r,
        Ok(_) => return dead("not a JSON object".into()),
        Err(e) => return dead(format!("not JSON: {e}")),
    };
    let key = match &source.key {
        Some(field) => match record.get(field) {
            Some(k) => key_text(k),
            None => {
                return dead(format!(
                    "the record has no {field:?} field (the source's key)"
                ))
            }
        },
        None => m
            .msg_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}:{}", source.stream, m.sequence)),
    };
    // Any delivery, not only a redelivery: after a server restart an item already written can
    // come back as a first delivery (a republished copy whose id the work queue forgot when it
    // deleted the acked original, or an ack the server had not yet stored).
    if done.is_some_and(|done| done(&key)) {
        return Intake::AlreadyDone;
    }
    Intake::Admit { key, record }
}

/// Decides what happens to the message of a failed item delivered `delivered` times.
pub(crate) fn on_failure(source: &NatsSource, delivered: u64) -> OnFailure {
    if delivered >= u64::from(source.max_deliver) {
        return OnFailure::DeadLetter;
    }
    OnFailure::RetryAfter(
        Duration::from_millis(source.retry_delay_ms)
            .saturating_mul(1 << delivered.saturating_sub(1).min(16))
            .min(Duration::from_secs(60)),
    )
}

/// Messages admitted to the pipeline, by key: several messages may carry the same key, and the
/// one item made for them settles them all.
#[derive(Debug)]
pub(crate) struct ByKey<M> {
    messages: HashMap<String, VecDeque<M>>,
}

impl<M> Default for ByKey<M> {
    fn default() -> Self {
        Self {
            messages: HashMap::new(),
        }
    }
}

impl<M> ByKey<M> {
    /// Holds `message` until its item under `key` finishes.
    pub fn hold(&mut self, key: String, message: M) {
        self.messages.entry(key).or_default().push_back(message);
    }

    /// Every message held under `key`, no longer held.
    pub fn take_all(&mut self, key: &str) -> Vec<M> {
        self.messages.remove(key).map(Vec::from).unwrap_or_default()
    }

    /// Whether a message is held under `key`.
    pub fn holds(&self, key: &str) -> bool {
        self.messages.contains_key(key)
    }

    /// Every message held.
    pub fn iter(&self) -> impl Iterator<Item = &M> {
        self.messages.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn source(key: Option<&str>, max_deliver: u32) -> NatsSource {
        let mut table: toml::Table = toml::from_str(&format!(
            "stream = \"work\"\nsubject = \"work.items\"\nconsumer = \"w\"\n\
             max_deliver = {max_deliver}\nretry_delay_ms = 1000"
        ))
        .unwrap();
        if let Some(k) = key {
            table.insert("key".into(), k.into());
        }
        NatsSource::parse(&table, "test").unwrap()
    }

    fn rules(key: Option<&str>) -> NatsSource {
        source(key, 3)
    }

    fn msg(payload: &[u8], delivered: u64) -> Delivery<'_> {
        Delivery {
            payload,
            msg_id: None,
            delivered,
            sequence: 42,
        }
    }

    #[test]
    fn records_are_keyed_by_field_then_message_id_then_stream_sequence() {
        let body = br#"{"id": 7, "text": "a"}"#;
        let admitted = |i: Intake| match i {
            Intake::Admit { key, .. } => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            admitted(intake(&rules(Some("id")), msg(body, 1), None)),
            "7"
        );
        let with_id = Delivery {
            msg_id: Some("m-1"),
            ..msg(body, 1)
        };
        assert_eq!(admitted(intake(&rules(None), with_id, None)), "m-1");
        assert_eq!(
            admitted(intake(&rules(None), msg(body, 1), None)),
            "work:42"
        );
    }

    #[test]
    fn unreadable_messages_are_dead_lettered_with_why() {
        let dead = |i: Intake| match i {
            Intake::DeadLetter { error, stage } => (error, stage),
            other => panic!("{other:?}"),
        };
        let (e, stage) = dead(intake(&rules(None), msg(b"[1, 2]", 1), None));
        assert_eq!((e.as_str(), stage), ("not a JSON object", "read"));
        let (e, _) = dead(intake(&rules(None), msg(b"{oops", 1), None));
        assert!(e.starts_with("not JSON: "), "{e}");
        let (e, _) = dead(intake(&rules(Some("id")), msg(br#"{"x": 1}"#, 1), None));
        assert!(e.contains("no \"id\" field"), "{e}");
        // Past max_deliver: its workers kept stopping before acking it.
        let (e, stage) = dead(intake(&rules(None), msg(br#"{"x": 1}"#, 4), None));
        assert_eq!(stage, "worker");
        assert!(e.contains("delivered 3 times"), "{e}");
    }

    #[test]
    fn an_item_with_its_output_written_is_skipped_however_often_delivered() {
        let done: Completed = Arc::new(|k: &str| k == "7");
        let body = br#"{"id": 7}"#;
        let r = rules(Some("id"));
        assert_eq!(intake(&r, msg(body, 2), Some(&done)), Intake::AlreadyDone);
        // A first delivery too: after a server restart a done item can come back as one.
        assert_eq!(intake(&r, msg(body, 1), Some(&done)), Intake::AlreadyDone);
        // Without a reading of the outputs, everything is admitted.
        assert!(matches!(
            intake(&r, msg(body, 1), None),
            Intake::Admit { .. }
        ));
        assert!(matches!(
            intake(&r, msg(br#"{"id": 8}"#, 2), Some(&done)),
            Intake::Admit { .. }
        ));
    }

    #[test]
    fn failures_back_off_exponentially_then_go_to_the_dead_letter_subject() {
        let r = source(None, 12);
        let delays: Vec<_> = (1..=8).map(|d| on_failure(&r, d)).collect();
        let secs = |s| OnFailure::RetryAfter(Duration::from_secs(s));
        assert_eq!(
            delays,
            [
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(60),
                secs(60)
            ]
        );
        assert_eq!(on_failure(&r, 12), OnFailure::DeadLetter);
        assert_eq!(on_failure(&rules(None), 3), OnFailure::DeadLetter);
    }

    #[test]
    fn the_messages_of_one_key_settle_together_oldest_first() {
        let mut held = ByKey::default();
        held.hold("a".into(), 1);
        held.hold("b".into(), 2);
        held.hold("a".into(), 3);
        assert!(held.holds("a"));
        assert_eq!(held.take_all("a"), [1, 3]);
        assert!(!held.holds("a"));
        assert!(held.take_all("a").is_empty());
        assert!(held.take_all("zzz").is_empty());
        assert_eq!(held.iter().copied().collect::<Vec<_>>(), [2]);
    }
}
