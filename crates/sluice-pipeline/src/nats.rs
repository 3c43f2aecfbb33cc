//! NATS JetStream between pipeline parts on many machines: a `nats` sink that publishes records
//! to a stream (deduplicated by key), and the `nats` source that `sluice worker` reads: a durable
//! pull consumer shared by every worker, acknowledged only once an item's output is durable.
//!
//! Delivery follows JetStream's rules rather than inventing new ones:
//! - a worker pulls `fetch` messages at a time and tells the server it is still working on the
//!   ones it holds (`+WPI`) every third of `ack_wait`, so only a worker that stops (killed, lost)
//!   has its messages redelivered, `ack_wait` after its last sign of life;
//! - an item is acked after its output is durable: a part file renamed into place, or a publish
//!   the results stream acknowledged. Outputs are idempotent by key (results carry the key as
//!   `Nats-Msg-Id`; a redelivered item whose key a part file already holds is acked, not redone),
//!   so a worker killed between writing and acking leaves no duplicate;
//! - a failed item is handed back (`-NAK` with a growing delay) until it has been delivered
//!   `max_deliver` times, then published to the dead-letter subject with the error in headers and
//!   acked. The consumer allows one delivery more than `max_deliver`, used only to dead-letter an
//!   item whose workers died every time (it never reached a failure report).
//!
//! The pipeline engine is synchronous; this module owns a small tokio runtime for the client.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, consumer, stream, AckKind, Message};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nats_state::{intake, on_failure, ByKey, Delivery, Intake, OnFailure, Rules};
use crate::section::{section, ConfigError};
use crate::stages::Record;
use crate::{lock, Completed, Envelope, Failure, Sink, SinkError};

/// The server used when a config names none and `NATS_URL` is unset.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// `[source] kind = "nats"`: the work stream and the consumer workers share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    /// Server URL (default: `$NATS_URL`, else [`DEFAULT_URL`]).
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
        let bad = |m: String| Err(ConfigError(format!("{place}: [source] (nats): {m}")));
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

    fn max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or(2 * self.fetch)
    }

    fn dead_subject(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dead", self.stream))
    }
}

/// `[sink] kind = "nats"`: records published to a subject, deduplicated by key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkSpec {
    /// Server URL (default: `$NATS_URL`, else [`DEFAULT_URL`]).
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
}

impl NatsSinkSpec {
    /// Reads `[sink]` (without its `kind`).
    pub fn parse(table: &toml::Table, place: &str) -> Result<Self, ConfigError> {
        let spec: NatsSinkSpec = section(table, "[sink] (nats)", place)?;
        if let Some(r) = &spec.retention {
            if r != "limits" && r != "workqueue" {
                return Err(ConfigError(format!(
                    "{place}: [sink] (nats): retention = {r:?}: expected \"limits\" or \"workqueue\""
                )));
            }
        }
        Ok(spec)
    }
}

/// A connection with the runtime that drives it.
#[derive(Clone)]
struct Nats {
    rt: Arc<tokio::runtime::Runtime>,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Nats {
    fn connect(
        url: Option<&str>,
        credentials: Option<&PathBuf>,
        name: &str,
    ) -> Result<Self, String> {
        let url = url
            .map(str::to_owned)
            .or_else(|| std::env::var("NATS_URL").ok())
            .unwrap_or_else(|| DEFAULT_URL.into());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-nats")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the NATS client runtime: {e}"))?;
        let client = rt.block_on(async {
            let mut options = async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(Duration::from_secs(10));
            if let Some(path) = credentials {
                options = options
                    .credentials_file(path)
                    .await
                    .map_err(|e| format!("reading NATS credentials {}: {e}", path.display()))?;
            }
            options
                .connect(url.as_str())
                .await
                .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))
        })?;
        // The context spawns its acknowledgement task, so it needs the runtime entered.
        let js = {
            let _entered = rt.enter();
            jetstream::new(client.clone())
        };
        Ok(Nats {
            rt: Arc::new(rt),
            client,
            js,
        })
    }

    /// The stream `name` keeping `subject`, created with these settings if missing.
    fn ensure_stream(
        &self,
        name: &str,
        subject: &str,
        retention: stream::RetentionPolicy,
        duplicate_window: Duration,
    ) -> Result<stream::Stream, String> {
        self.rt.block_on(async {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.into(),
                    subjects: vec![subject.into()],
                    retention,
                    storage: stream::StorageType::File,
                    duplicate_window,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("stream {name} (subject {subject}): {e}"))
        })
    }
}

/// Publishes records to a subject; each carries its key as `Nats-Msg-Id`, so JetStream drops a
/// key published again within the stream's duplicate window (a rerun, a redelivered item).
pub struct NatsSink {
    nats: Nats,
    subject: String,
    key_field: String,
    held: Vec<(String, Bytes)>,
    published: u64,
    duplicates: u64,
}

/// Publishes in rounds of this many messages, each round awaiting its acknowledgements.
const PUBLISH_ROUND: usize = 256;

impl NatsSink {
    /// Connects and makes sure a stream keeps the subject.
    pub fn connect(spec: &NatsSinkSpec, default_key_field: &str) -> Result<Self, SinkError> {
        let nats = Nats::connect(
            spec.url.as_deref(),
            spec.credentials.as_ref(),
            "sluice-sink",
        )
        .map_err(SinkError::Encode)?;
        Self::on(nats, spec, default_key_field)
    }

    /// As [`NatsSink::connect`], on an open connection.
    fn on(nats: Nats, spec: &NatsSinkSpec, default_key_field: &str) -> Result<Self, SinkError> {
        if let Some(name) = &spec.stream {
            let retention = match spec.retention.as_deref() {
                Some("workqueue") => stream::RetentionPolicy::WorkQueue,
                _ => stream::RetentionPolicy::Limits,
            };
            let window = Duration::from_secs_f64(spec.duplicate_window_s.unwrap_or(600.0));
            nats.ensure_stream(name, &spec.subject, retention, window)
                .map_err(SinkError::Encode)?;
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
        let held = std::mem::take(&mut self.held);
        let (js, subject) = (&self.nats.js, self.subject.clone());
        let (published, duplicates) = self.nats.rt.block_on(async {
            let mut acks = Vec::with_capacity(held.len());
            for (key, payload) in held {
                let message = Publish::build().payload(payload).message_id(&key);
                let ack = js
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| SinkError::Encode(format!("publishing to {subject}: {e}")))?;
                acks.push(ack);
            }
            let (mut published, mut duplicates) = (0, 0);
            for ack in acks {
                let ack = ack.await.map_err(|e| {
                    SinkError::Encode(format!("{subject}: the stream did not confirm: {e}"))
                })?;
                published += 1;
                duplicates += u64::from(ack.duplicate);
            }
            Ok::<_, SinkError>((published, duplicates))
        })?;
        self.published += published;
        self.duplicates += duplicates;
        Ok(())
    }
}

impl<T: Serialize> Sink<T> for NatsSink {
    fn write(&mut self, item: Envelope<T>) -> Result<(), SinkError> {
        let value = crate::sink::keyed_record(&item, &self.key_field)?;
        let payload = serde_json::to_vec(&value).map_err(|e| SinkError::Encode(e.to_string()))?;
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

/// What a worker did with the messages it received.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerCounts {
    /// Messages received.
    pub received: u64,
    /// Of those, messages delivered before (to this worker or another).
    pub redelivered: u64,
    /// Messages acked after their output was written.
    pub acked: u64,
    /// Redelivered items whose output already existed: acked without redoing them.
    pub already_done: u64,
    /// Failed items handed back for another try.
    pub retried: u64,
    /// Items sent to the dead-letter subject.
    pub dead_lettered: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    already_done: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerCounts {
        WorkerCounts {
            received: self.received.load(Relaxed),
            redelivered: self.redelivered.load(Relaxed),
            acked: self.acked.load(Relaxed),
            already_done: self.already_done.load(Relaxed),
            retried: self.retried.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
        }
    }
}

/// Reads which keys the outputs hold now, for redelivered items.
pub type DoneCheck = Box<dyn Fn() -> Result<Option<Completed>, SinkError> + Send + Sync>;

/// The messages a worker holds, from pull to ack.
struct Held {
    nats: Nats,
    consumer: consumer::PullConsumer,
    spec: NatsSource,
    dead_subject: String,
    /// Pulled, not yet handed to the pipeline.
    waiting: Mutex<VecDeque<Message>>,
    /// In the pipeline, by key (several messages may share a key).
    pending: Mutex<ByKey<Message>>,
    /// What the decisions about messages read from the source settings.
    rules: Rules,
    /// Messages admitted to the pipeline and not yet settled (acked, handed back or dead).
    in_flight: AtomicU64,
    counts: Counters,
    stop: Arc<AtomicBool>,
    /// How to read which keys the outputs hold (part files; a NATS sink deduplicates itself).
    done_check: Option<DoneCheck>,
    /// What `done_check` read when the last pull brought redelivered messages.
    done: Mutex<Option<Completed>>,
}

/// A message's delivery count and stream sequence.
fn delivery(message: &Message) -> (u64, u64) {
    message
        .info()
        .map(|i| (i.delivered.max(1) as u64, i.stream_sequence))
        .unwrap_or((1, 0))
}

/// Header values are one line.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.chars().take(1000).collect()
}

impl Held {
    fn open(
        spec: &NatsSource,
        stop: Arc<AtomicBool>,
        done_check: Option<DoneCheck>,
    ) -> Result<Self, String> {
        let nats = Nats::connect(
            spec.url.as_deref(),
            spec.credentials.as_ref(),
            "sluice-worker",
        )?;
        let work = nats.ensure_stream(
            &spec.stream,
            &spec.subject,
            stream::RetentionPolicy::WorkQueue,
            Duration::from_secs(120),
        )?;
        let dead_subject = spec.dead_subject();
        nats.ensure_stream(
            &format!("{}-dead", spec.stream),
            &dead_subject,
            stream::RetentionPolicy::Limits,
            Duration::from_secs(600),
        )?;
        let consumer = nats.rt.block_on(async {
            work.create_consumer(consumer::pull::Config {
                durable_name: Some(spec.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs_f64(spec.ack_wait_s),
                // One delivery beyond max_deliver, to dead-letter items whose workers all died.
                max_deliver: i64::from(spec.max_deliver) + 1,
                filter_subject: spec.subject.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("consumer {} on stream {}: {e}", spec.consumer, spec.stream))
        })?;
        Ok(Held {
            nats,
            consumer,
            spec: spec.clone(),
            dead_subject,
            waiting: Mutex::new(VecDeque::new()),
            pending: Mutex::new(ByKey::default()),
            rules: Rules {
                stream: spec.stream.clone(),
                key: spec.key.clone(),
                max_deliver: spec.max_deliver,
                retry_delay: Duration::from_millis(spec.retry_delay_ms),
            },
            in_flight: AtomicU64::new(0),
            counts: Counters::default(),
            stop,
            done_check,
            done: Mutex::new(None),
        })
    }

    /// Room for more messages under `max_in_flight`.
    fn room(&self) -> usize {
        let held = self.in_flight.load(Relaxed) as usize + lock(&self.waiting).len();
        self.spec.max_in_flight().saturating_sub(held)
    }

    /// Pulls up to `fetch` messages, waiting at most a second.
    fn pull(&self, fetch: usize) -> Result<Vec<Message>, String> {
        self.nats.rt.block_on(async {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(fetch)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| format!("pulling messages: {e}"))?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| format!("pulling messages: {e}"))?);
            }
            Ok(messages)
        })
    }

    /// True when the consumer has nothing left: nothing pending, nothing awaiting an ack anywhere.
    fn drained(&self) -> Result<bool, String> {
        // `info` refreshes the consumer's cached state, hence a copy to call it on.
        let mut consumer = self.consumer.clone();
        self.nats.rt.block_on(async move {
            let info = consumer
                .info()
                .await
                .map_err(|e| format!("reading the consumer's state: {e}"))?;
            Ok(info.num_pending == 0 && info.num_ack_pending == 0)
        })
    }

    /// Turns a pulled message into a pipeline item, or settles it at once ([`intake`] decides).
    fn admit(&self, message: Message) -> Option<(String, Record)> {
        let (delivered, sequence) = delivery(&message);
        self.counts.received.fetch_add(1, Relaxed);
        if delivered > 1 {
            self.counts.redelivered.fetch_add(1, Relaxed);
        }
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        let decision = intake(
            &self.rules,
            Delivery {
                payload: &message.payload,
                msg_id: msg_id.as_deref(),
                delivered,
                sequence,
            },
            lock(&self.done).as_ref(),
        );
        match decision {
            Intake::Admit { key, record } => {
                self.in_flight.fetch_add(1, Relaxed);
                lock(&self.pending).hold(key.clone(), message);
                Some((key, record))
            }
            Intake::DeadLetter { error, stage } => {
                self.dead_letter(message, &error, stage, None);
                None
            }
            Intake::AlreadyDone => {
                self.counts.already_done.fetch_add(1, Relaxed);
                self.ack(vec![message]);
                None
            }
        }
    }

    /// Reads which keys the outputs hold, once per pull that brought redelivered messages: they
    /// come back `ack_wait` after their worker's last sign of life, so its outputs are all in place
    /// by now, and one read serves the whole pull.
    fn refresh_done(&self, pulled: &[Message]) {
        let Some(check) = &self.done_check else {
            return;
        };
        if pulled.iter().all(|m| delivery(m).0 == 1) {
            return;
        }
        *lock(&self.done) = match check() {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!("cannot read which outputs exist ({e}); redoing redelivered items");
                None
            }
        };
    }

    fn take(&self, key: &str) -> Option<Message> {
        lock(&self.pending).take(key)
    }

    /// Acks admitted messages whose outputs are durable.
    fn settle(&self, messages: Vec<Message>) {
        let n = messages.len() as u64;
        self.ack(messages);
        self.in_flight.fetch_sub(n, Relaxed);
    }

    fn ack(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let n = messages.len() as u64;
        let result = self.nats.rt.block_on(async {
            for message in &messages {
                message.ack().await?;
            }
            self.nats.client.flush().await?;
            Ok::<_, async_nats::Error>(())
        });
        match result {
            Ok(()) => {
                self.counts.acked.fetch_add(n, Relaxed);
            }
            // Unacked messages come back after ack_wait and are found done then.
            Err(e) => tracing::warn!("acknowledging {n} messages: {e}"),
        }
    }

    /// A failed item: another try later, or the dead-letter subject after `max_deliver`.
    fn failed(&self, failure: &Failure) {
        let Some(message) = self.take(&failure.key) else {
            return;
        };
        self.in_flight.fetch_sub(1, Relaxed);
        let (delivered, _) = delivery(&message);
        let delay = match on_failure(&self.rules, delivered) {
            OnFailure::RetryAfter(delay) => delay,
            OnFailure::DeadLetter => {
                self.dead_letter(
                    message,
                    &failure.error,
                    &failure.stage,
                    Some(failure.attempts),
                );
                return;
            }
        };
        let result = self
            .nats
            .rt
            .block_on(message.ack_with(AckKind::Nak(Some(delay))));
        match result {
            Ok(()) => {
                self.counts.retried.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::warn!("handing back {}: {e}", failure.key),
        }
    }

    /// Publishes the message to the dead-letter subject with why, then acks it.
    fn dead_letter(&self, message: Message, error: &str, stage: &str, attempts: Option<u32>) {
        let (delivered, sequence) = delivery(&message);
        let mut publish = Publish::build()
            .payload(message.payload.clone())
            // A retried dead-lettering cannot store the item twice.
            .message_id(format!("{}-{sequence}", self.spec.stream))
            .header("Sluice-Error", one_line(error).as_str())
            .header("Sluice-Stage", one_line(stage).as_str())
            .header("Sluice-Deliveries", delivered.to_string().as_str())
            .header("Sluice-Stream", self.spec.stream.as_str())
            .header("Sluice-Stream-Sequence", sequence.to_string().as_str())
            .header("Sluice-Subject", message.subject.as_str());
        if let Some(attempts) = attempts {
            publish = publish.header("Sluice-Attempts", attempts.to_string().as_str());
        }
        let subject = self.dead_subject.clone();
        let result = self.nats.rt.block_on(async {
            self.nats
                .js
                .send_publish(subject.clone(), publish)
                .await?
                .await?;
            message.ack().await?;
            Ok::<_, async_nats::Error>(())
        });
        match result {
            Ok(()) => {
                self.counts.dead_lettered.fetch_add(1, Relaxed);
                tracing::warn!(
                    "dead-lettered stream sequence {sequence} to {subject} after {delivered} \
                     deliveries: {error}"
                );
            }
            // Left unacked, it comes back once more and is dead-lettered then.
            Err(e) => tracing::error!("dead-lettering stream sequence {sequence}: {e}"),
        }
    }

    /// Tells the server this worker still works on everything it holds.
    async fn keep_alive(self: Arc<Self>) {
        let every = Duration::from_secs_f64(self.spec.ack_wait_s / 3.0);
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<Message> = {
                let waiting = lock(&self.waiting);
                let pending = lock(&self.pending);
                waiting.iter().chain(pending.iter()).cloned().collect()
            };
            for message in held {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!("progress signal: {e}");
                }
            }
        }
    }
}

/// The worker's source: pulls until stopped (or drained, when asked).
pub(crate) struct Pull {
    queue: Arc<Held>,
    exit_when_drained: bool,
}

impl Iterator for Pull {
    type Item = (String, Record);

    fn next(&mut self) -> Option<Self::Item> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.queue.stop.load(Relaxed) {
                return None;
            }
            let next = lock(&self.queue.waiting).pop_front();
            if let Some(message) = next {
                match self.queue.admit(message) {
                    Some(item) => return Some(item),
                    None => continue,
                }
            }
            let room = self.queue.room();
            if room == 0 {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match self.queue.pull(room.min(self.queue.spec.fetch)) {
                Ok(messages) if !messages.is_empty() => {
                    self.queue.refresh_done(&messages);
                    lock(&self.queue.waiting).extend(messages);
                    backoff = Duration::from_millis(200);
                }
                Ok(_) => {
                    if self.exit_when_drained {
                        match self.queue.drained() {
                            Ok(true) => return None,
                            Ok(false) => {}
                            Err(e) => tracing::warn!("{e}"),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Wraps the pipeline's sink: acks inputs once their outputs are durable.
struct AckingSink {
    inner: Box<dyn Sink<Record>>,
    queue: Arc<Held>,
    held: Vec<Message>,
    since: Option<Instant>,
    every: Duration,
    most: usize,
}

impl AckingSink {
    fn settle(&mut self) -> Result<(), SinkError> {
        self.inner.flush()?;
        self.queue.settle(std::mem::take(&mut self.held));
        self.since = None;
        Ok(())
    }
}

impl Sink<Record> for AckingSink {
    fn write(&mut self, item: Envelope<Record>) -> Result<(), SinkError> {
        let message = self.queue.take(&item.key);
        self.inner.write(item)?;
        self.held.extend(message);
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.held.len() >= self.most || since.elapsed() >= self.every {
            self.settle()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.settle()?;
        self.inner.finish()
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.settle()
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        match self.since {
            Some(since) if since.elapsed() >= self.every => self.settle(),
            _ => Ok(()),
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Stop once the consumer has nothing pending and nothing awaiting an ack (for Jobs, tests).
    pub exit_when_drained: bool,
    /// Set to stop pulling; the worker then finishes what it holds, acks, and returns.
    pub stop: Arc<AtomicBool>,
}

/// The sink a worker writes to, before acking is wrapped around it.
pub(crate) enum WorkerSink {
    /// Part files of up to this many records.
    Parts(Box<dyn Sink<Record>>, usize),
    /// A NATS subject (deduplicated by key).
    Nats(NatsSinkSpec, String),
}

/// What [`run_worker`] needs from a config.
pub(crate) struct WorkerPlan {
    pub source: NatsSource,
    pub sink: WorkerSink,
    /// How to read which keys the outputs already hold (part files only).
    pub done_check: Option<DoneCheck>,
    pub build: Box<dyn FnOnce(Pull) -> crate::Pipeline<Record>>,
}

/// Runs a worker until stopped; returns the run summary and what happened to the messages.
pub(crate) fn run_worker(
    plan: WorkerPlan,
    mut options: crate::RunOptions,
    worker: WorkerOptions,
) -> Result<(crate::RunSummary, WorkerCounts), crate::RunError> {
    let queue = Held::open(&plan.source, worker.stop.clone(), plan.done_check);
    let queue = Arc::new(queue.map_err(crate::RunError::Invalid)?);
    let (inner, most): (Box<dyn Sink<Record>>, usize) = match plan.sink {
        WorkerSink::Parts(sink, part_items) => (sink, part_items),
        WorkerSink::Nats(spec, key_field) => {
            // Unset, the server and credentials are the work stream's, and so is the connection.
            let spec = NatsSinkSpec {
                url: spec.url.or_else(|| plan.source.url.clone()),
                credentials: spec.credentials.or_else(|| plan.source.credentials.clone()),
                ..spec
            };
            let sink =
                if (&spec.url, &spec.credentials) == (&plan.source.url, &plan.source.credentials) {
                    NatsSink::on(queue.nats.clone(), &spec, &key_field)?
                } else {
                    NatsSink::connect(&spec, &key_field)?
                };
            (Box::new(sink), PUBLISH_ROUND)
        }
    };
    let keep_alive = queue.nats.rt.spawn(queue.clone().keep_alive());
    let mut sink = AckingSink {
        inner,
        queue: queue.clone(),
        held: Vec::new(),
        since: None,
        every: Duration::from_millis(plan.source.flush_ms),
        // Settle before the in-flight bound stops the pulling, or the worker idles until flush_ms.
        most: most.min(plan.source.max_in_flight() / 2).max(1),
    };
    let hook_queue = queue.clone();
    options.on_failure = Some(Arc::new(move |f: &Failure| hook_queue.failed(f)));
    // The queue decides what is done (redelivered items) and every pulled item must reach the
    // sink or the failure hook, so the engine neither skips nor shards here.
    options.skip_completed = false;
    options.shard = crate::Shard::ALL;
    options.mode = Some(crate::Mode::Streaming);
    options.preserve_order = false;
    let flush = Duration::from_millis(plan.source.flush_ms);
    options.batch_wait = Some(options.batch_wait.unwrap_or(flush / 3).min(flush / 3));
    let pipeline = (plan.build)(Pull {
        queue: queue.clone(),
        exit_when_drained: worker.exit_when_drained,
    });
    let result = pipeline.run(&options, &mut sink);
    keep_alive.abort();
    // Whatever is still held (an aborted run) is left unacked: JetStream redelivers it.
    let counts = queue.counts.snapshot();
    result.map(|summary| (summary, counts))
}

/// Stops `flag`'s worker on SIGTERM or Ctrl-C (what Kubernetes sends before killing a pod).
pub fn stop_on_signals(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            rt.block_on(async {
                sluice_core::signal::terminated().await;
                tracing::info!("stopping: finishing the items held, then acknowledging them");
                flag.store(true, Relaxed);
            })
        })?;
    Ok(())
}
