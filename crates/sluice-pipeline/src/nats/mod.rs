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
//!   `Nats-Msg-Id`; an item whose key a part file already holds is acked, not redone), so a
//!   worker killed between writing and acking leaves no duplicate, and neither does a server
//!   restart (which can bring done items back as first deliveries: the outputs are read again
//!   for every pull for a while after the connection was lost);
//! - a failed item is handed back (`-NAK` with a growing delay) until it has been delivered
//!   `max_deliver` times, then published to the dead-letter subject with the error in headers and
//!   acked. The consumer allows one delivery more than `max_deliver`, used only to dead-letter an
//!   item whose workers died every time (it never reached a failure report).
//!
//! The pipeline engine is synchronous; this module owns a small tokio runtime for the client.

mod publish;
mod spec;
mod state;
mod worker;

pub use crate::connector::{stop_on_signals, DoneCheck, WorkerCounts, WorkerOptions};
pub use publish::NatsSink;
use publish::PUBLISH_ROUND;
pub use spec::{NatsSinkSpec, NatsSource};

use crate::config::doc::{Kind, KindDoc, SinkBuilder, SourceBuilder};
use crate::config::raw::RawSection;
use crate::connector::{BrokerSource, SinkConfig, SourceConfig, WorkerJob};
use crate::stages::{Record, SourceItems};
use crate::{RunError, RunSummary, Sink, SinkError};

use async_nats::jetstream::{self, stream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The server used when a config names none and `NATS_URL` is unset.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// A connection with the runtime that drives it.
#[derive(Clone)]
struct Nats {
    rt: Arc<tokio::runtime::Runtime>,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Times the connection was lost (the client reconnects by itself).
    disconnects: Arc<AtomicU64>,
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
        let disconnects = Arc::new(AtomicU64::new(0));
        let counted = disconnects.clone();
        let client = rt.block_on(async {
            let mut options = async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(Duration::from_secs(10))
                .event_callback(move |event| {
                    let counted = counted.clone();
                    async move {
                        if let async_nats::Event::Disconnected = event {
                            tracing::warn!("lost the connection to NATS; reconnecting");
                            counted.fetch_add(1, Relaxed);
                        }
                    }
                });
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
            disconnects,
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
            let created = self
                .js
                .get_or_create_stream(stream::Config {
                    name: name.into(),
                    subjects: vec![subject.into()],
                    retention,
                    storage: stream::StorageType::File,
                    duplicate_window,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(stream) => Ok(stream),
                // A publisher and its workers starting together both create the stream, each
                // with its own settings: the one that lost the race uses the winner's.
                Err(e) => self
                    .js
                    .get_stream(name)
                    .await
                    .map_err(|_| format!("stream {name} (subject {subject}): {e}")),
            }
        })
    }
}

/// `[source] kind = "nats"`.
pub(crate) fn source() -> Kind<SourceBuilder> {
    let doc = KindDoc::of::<NatsSource>(
        "a JetStream work stream that `sluice worker` pulls from through a durable consumer",
    );
    Kind::new(doc, |s: &RawSection| {
        NatsSource::parse(&s.table, &s.place).map(|n| Arc::new(n) as Arc<dyn SourceConfig>)
    })
}

/// `[sink] kind = "nats"`.
pub(crate) fn sink() -> Kind<SinkBuilder> {
    let doc = KindDoc::of::<NatsSinkSpec>(
        "records published to a JetStream subject, deduplicated by key",
    );
    Kind::new(doc, |s: &RawSection| {
        NatsSinkSpec::parse(&s.table, &s.place).map(|n| Arc::new(n) as Arc<dyn SinkConfig>)
    })
}

impl SourceConfig for NatsSource {
    fn key_field(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn open(&self) -> Result<SourceItems, RunError> {
        Err(RunError::WrongCommand(
            "a [source] of kind = \"nats\" is read by workers that run until stopped: use \
             `sluice worker FILE` (with --exit-when-drained to stop once the stream is empty)"
                .into(),
        ))
    }

    fn broker(&self) -> Option<&dyn BrokerSource> {
        Some(self)
    }
}

impl BrokerSource for NatsSource {
    fn run_worker(&self, job: WorkerJob) -> Result<(RunSummary, WorkerCounts), RunError> {
        worker::run_worker(self, job)
    }
}

/// What a NATS worker lends its sink: the work stream's server and connection.
pub(crate) struct WorkerConnection {
    url: Option<String>,
    credentials: Option<PathBuf>,
    nats: Nats,
}

impl SinkConfig for NatsSinkSpec {
    fn key_field(&self) -> Option<&str> {
        self.key_field.as_deref()
    }

    fn describe(&self) -> String {
        format!("NATS subject {}", self.subject)
    }

    fn cannot_skip(&self) -> Option<&'static str> {
        Some(
            "a stream cannot tell which items are done, so skip_completed cannot apply; \
             JetStream drops a key published again within the stream's duplicate window instead",
        )
    }

    fn open(&self, key_field: &str, _tag: &str) -> Result<Box<dyn Sink<Record>>, SinkError> {
        Ok(Box::new(NatsSink::connect(self, key_field)?))
    }

    /// Unset, the server and credentials are the work stream's, and so is the connection.
    fn open_for_worker(
        &self,
        key_field: &str,
        tag: &str,
        broker: &dyn std::any::Any,
    ) -> Result<Box<dyn Sink<Record>>, SinkError> {
        let Some(held) = broker.downcast_ref::<WorkerConnection>() else {
            return self.open(key_field, tag);
        };
        let spec = NatsSinkSpec {
            url: self.url.clone().or_else(|| held.url.clone()),
            credentials: self
                .credentials
                .clone()
                .or_else(|| held.credentials.clone()),
            ..self.clone()
        };
        let same = (&spec.url, &spec.credentials) == (&held.url, &held.credentials);
        Ok(Box::new(if same {
            NatsSink::on(held.nats.clone(), &spec, key_field)?
        } else {
            NatsSink::connect(&spec, key_field)?
        }))
    }

    fn flush_items(&self) -> usize {
        PUBLISH_ROUND
    }
}
