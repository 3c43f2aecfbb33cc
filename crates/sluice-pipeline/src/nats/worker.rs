//! `sluice worker`: a pipeline fed by a durable pull consumer, each item acked once its output is
//! durable, failures handed back or dead-lettered (the decisions are in [`super::state`]).

use super::state::{intake, on_failure, ByKey, Delivery, Intake, OnFailure};
use super::*;
use crate::connector::worker_tag;
use crate::stages::Record;
use crate::{lock, Completed, Envelope, Failure, Sink, SinkError};
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{consumer, stream, AckKind, Message};
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    already_done: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    abandoned: AtomicU64,
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
            abandoned: self.abandoned.load(Relaxed),
        }
    }
}

/// The messages a worker holds, from pull to ack.
struct Held {
    nats: Nats,
    consumer: consumer::PullConsumer,
    spec: NatsSource,
    dead_subject: String,
    /// Pulled, not yet handed to the pipeline.
    waiting: Mutex<VecDeque<Message>>,
    /// In the pipeline, by key (several messages may share a key: one item serves them all),
    /// each with the count of connection losses when it was admitted.
    pending: Mutex<ByKey<(u64, Message)>>,
    /// Messages admitted to the pipeline and not yet settled (acked, handed back or dead).
    in_flight: AtomicU64,
    counts: Counters,
    stop: Arc<AtomicBool>,
    /// How to read which keys the outputs hold (part files; a NATS sink deduplicates itself).
    done_check: Option<DoneCheck>,
    /// What `done_check` read last (see [`Held::refresh_done`]).
    done: Mutex<Option<Completed>>,
    /// Until when every pull reads the outputs again, after the connection was lost.
    suspect_until: Mutex<Option<Instant>>,
    /// Connection losses already seen.
    disconnects_seen: AtomicU64,
    /// When the outputs were last read.
    read_at: Mutex<Option<Instant>>,
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
            in_flight: AtomicU64::new(0),
            counts: Counters::default(),
            stop,
            done_check,
            done: Mutex::new(None),
            suspect_until: Mutex::new(None),
            disconnects_seen: AtomicU64::new(0),
            read_at: Mutex::new(None),
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
            &self.spec,
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
                let mut pending = lock(&self.pending);
                // A second message for a key in the pipeline (a republished copy, a
                // redelivery) waits for that item rather than making a second output.
                let first = !pending.holds(&key);
                pending.hold(key.clone(), (self.epoch(), message));
                first.then_some((key, record))
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

    /// After the connection was lost (or a pull failed), done items can come back as first
    /// deliveries for a while; this starts that while.
    fn suspect(&self) {
        let window = Duration::from_secs_f64((4.0 * self.spec.ack_wait_s).max(60.0));
        *lock(&self.suspect_until) = Some(Instant::now() + window);
    }

    /// Reads which keys the outputs hold: once per pull that brought redelivered messages (they
    /// come back `ack_wait` after their worker's last sign of life, so its outputs are all in place
    /// by now, and one read serves the whole pull), and at most once a second for every pull
    /// while a lost connection is recent.
    fn refresh_done(&self, pulled: &[Message]) {
        let Some(check) = &self.done_check else {
            return;
        };
        let disconnects = self.nats.disconnects.load(Relaxed);
        if self.disconnects_seen.swap(disconnects, Relaxed) != disconnects {
            self.suspect();
        }
        let now = Instant::now();
        let suspect = lock(&self.suspect_until).is_some_and(|until| now < until);
        let stale =
            lock(&self.read_at).is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        let redelivered = pulled.iter().any(|m| delivery(m).0 > 1);
        if !(redelivered || (suspect && stale)) {
            return;
        }
        *lock(&self.read_at) = Some(now);
        *lock(&self.done) = match check() {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!("cannot read which outputs exist ({e}); redoing redelivered items");
                None
            }
        };
    }

    /// Connection losses so far: a message admitted before the latest one may have been
    /// given to another worker meanwhile.
    fn epoch(&self) -> u64 {
        self.nats.disconnects.load(Relaxed)
    }

    fn take(&self, key: &str) -> Vec<(u64, Message)> {
        lock(&self.pending).take_all(key)
    }

    /// Lets go of messages without acking them: the server gives them out again.
    fn abandon(&self, messages: Vec<(u64, Message)>) {
        let n = messages.len() as u64;
        self.in_flight.fetch_sub(n, Relaxed);
        self.counts.abandoned.fetch_add(n, Relaxed);
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
        for (_, message) in self.take(&failure.key) {
            self.in_flight.fetch_sub(1, Relaxed);
            self.failed_message(message, failure);
        }
    }

    fn failed_message(&self, message: Message, failure: &Failure) {
        let (delivered, _) = delivery(&message);
        let delay = match on_failure(&self.spec, delivered) {
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
                waiting
                    .iter()
                    .chain(pending.iter().map(|(_, m)| m))
                    .cloned()
                    .collect()
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
                    self.queue.suspect();
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
        let messages = self.queue.take(&item.key);
        // The connection was lost since this item's message came: the server may have given it
        // to another worker meanwhile, so its output is not written here; unacked, the message
        // comes back and is done (or found done) once.
        let epoch = self.queue.epoch();
        if messages.iter().any(|(admitted, _)| *admitted != epoch) {
            tracing::warn!(key = %item.key, "not writing an item held across a lost connection");
            self.queue.abandon(messages);
            return Ok(());
        }
        self.inner.write(item)?;
        self.held.extend(messages.into_iter().map(|(_, m)| m));
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

/// Runs a worker until stopped; returns the run summary and what happened to the messages.
pub(crate) fn run_worker(
    source: &NatsSource,
    job: WorkerJob,
) -> Result<(crate::RunSummary, WorkerCounts), crate::RunError> {
    let WorkerJob {
        sink,
        key_field,
        build,
        mut options,
        worker,
    } = job;
    let done_check = sink.done_check(&key_field)?;
    let queue = Held::open(source, worker.stop.clone(), done_check);
    let queue = Arc::new(queue.map_err(crate::RunError::Broker)?);
    let connection = WorkerConnection {
        url: source.url.clone(),
        credentials: source.credentials.clone(),
        nats: queue.nats.clone(),
    };
    let inner = sink.open_for_worker(&key_field, &worker_tag(), &connection)?;
    let keep_alive = queue.nats.rt.spawn(queue.clone().keep_alive());
    let mut sink = AckingSink {
        inner,
        queue: queue.clone(),
        held: Vec::new(),
        since: None,
        every: Duration::from_millis(source.flush_ms),
        // Settle before the in-flight bound stops the pulling, or the worker idles until flush_ms.
        most: sink.flush_items().min(source.max_in_flight() / 2).max(1),
    };
    let hook_queue = queue.clone();
    options.on_failure = Some(Arc::new(move |f: &Failure| hook_queue.failed(f)));
    // The queue decides what is done (redelivered items) and every pulled item must reach the
    // sink or the failure hook, so the engine neither skips nor shards here.
    options.skip_completed = false;
    options.shard = crate::Shard::ALL;
    options.mode = Some(crate::Mode::Streaming);
    options.preserve_order = false;
    let flush = Duration::from_millis(source.flush_ms);
    options.batch_wait = Some(options.batch_wait.unwrap_or(flush / 3).min(flush / 3));
    let pipeline = build(Box::new(Pull {
        queue: queue.clone(),
        exit_when_drained: worker.exit_when_drained,
    }));
    let result = pipeline.run(&options, &mut sink);
    keep_alive.abort();
    // Whatever is still held (an aborted run) is left unacked: JetStream redelivers it.
    let counts = queue.counts.snapshot();
    result.map(|summary| (summary, counts))
}
