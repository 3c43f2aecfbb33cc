//! Dynamic batching across requests: one queue per model, owned by one task (an actor), feeding
//! dedicated compute threads.
//!
//! Request handlers only append entries and await their replies; no lock guards the queue. The
//! batching rules live in [`State`], plain synchronous code tested without a runtime. Forward
//! passes run on OS threads owned by the batcher, never on the async runtime, so a long batch
//! cannot stall accepting connections, health checks or metrics. Capacity is enforced before an
//! entry is queued (a semaphore the handler tries once), so overload is answered at admission.

use sluice_models::service::Batch as Backend;
use sluice_models::ModelError;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why a model produced no output for a batch, or for one item of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The model's own error.
    #[error("the model failed: {0}")]
    Model(Arc<ModelError>),
    /// The model panicked on the batch.
    #[error("the model panicked")]
    Panicked,
    /// The model returned another number of outputs than it was given inputs.
    #[error("the model returned {got} outputs for {want} inputs")]
    WrongCount {
        /// Outputs returned.
        got: usize,
        /// Inputs given.
        want: usize,
    },
    /// The batch was dropped before it was answered (the server is stopping).
    #[error("the batch was abandoned")]
    Abandoned,
}

impl From<ModelError> for BackendError {
    fn from(e: ModelError) -> Self {
        BackendError::Model(Arc::new(e))
    }
}

/// Why an entry got no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntryError {
    /// The entry's deadline passed before it reached a batch.
    #[error("the request's deadline passed while it waited in the queue")]
    DeadlineExceeded,
    /// The model gave no output for it.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a handler receives for one entry.
pub type Reply<B> = Result<<B as Backend>::Done, EntryError>;

/// Answers one entry, its queue seat freed first: a client that has its answer never sees its
/// item still counted in the queue depth. A client that went away is not an error.
fn answer<T>(
    reply: oneshot::Sender<Result<T, EntryError>>,
    permit: OwnedSemaphorePermit,
    out: Result<T, EntryError>,
) {
    drop(permit);
    let _ = reply.send(out);
}

/// One item waiting for a batch.
pub struct Entry<B: Backend> {
    /// The prepared input handed to the backend.
    pub input: B::Item,
    /// Entries run together only when their keys are equal.
    pub key: B::Key,
    /// Padding cost of the item (its token count): a batch costs `longest × items`.
    pub cost: usize,
    /// Where the output goes; closed once the client has gone away.
    pub reply: oneshot::Sender<Reply<B>>,
    /// When the entry joined the queue: the max-wait rule and the queue-time metric start here.
    pub queued_at: Instant,
    /// After this instant nobody waits for the output, so the entry is not computed.
    pub deadline: Option<Instant>,
    /// The entry's seat in the queue capacity, given back when the entry is answered or dropped.
    pub permit: OwnedSemaphorePermit,
}

/// Entries removed without being computed, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Their client disconnected (or stopped waiting).
    pub disconnected: usize,
    /// Their deadline passed.
    pub expired: usize,
}

/// The queue's contents and batching rules, without any I/O.
pub struct State<B: Backend> {
    entries: VecDeque<Entry<B>>,
}

impl<B: Backend> Default for State<B> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<B: Backend> State<B> {
    /// Adds entries at the back, in order.
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry<B>>) {
        self.entries.extend(entries);
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the oldest waiting entry was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.queued_at)
    }

    /// Removes entries nobody waits for: the client left, or the deadline passed (those are told).
    pub fn drop_dead(&mut self, now: Instant) -> Dropped {
        let mut dropped = Dropped::default();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            if e.reply.is_closed() {
                dropped.disconnected += 1;
            } else if e.deadline.is_some_and(|d| d <= now) {
                dropped.expired += 1;
                answer(e.reply, e.permit, Err(EntryError::DeadlineExceeded));
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        dropped
    }

    /// Takes the next batch: the oldest entry plus up to `max_items - 1` entries with the same key
    /// and the closest lengths, while `longest × items` stays within `max_tokens`.
    ///
    /// Always including the oldest entry bounds every entry's wait; picking neighbours by length
    /// keeps padding low when long and short texts are queued together. The batch comes back
    /// sorted by cost.
    pub fn next_batch(&mut self, max_items: usize, max_tokens: usize) -> Vec<Entry<B>> {
        let Some(first) = self.entries.front() else {
            return Vec::new();
        };
        let key = first.key.clone();
        // Same-key entries by cost; a stable sort keeps arrival order among equal costs.
        let mut same: Vec<(usize, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.key == key)
            .map(|(i, e)| (e.cost, i))
            .collect();
        same.sort_by_key(|&(cost, _)| cost);
        let p = same
            .iter()
            .position(|&(_, i)| i == 0)
            .expect("the oldest entry has its own key");
        let (mut lo, mut hi) = (p, p);
        let fits = |longest: usize, items: usize| longest.saturating_mul(items) <= max_tokens;
        while hi - lo + 1 < max_items.max(1) {
            let items = hi - lo + 2;
            // Adding a shorter entry costs its own padding; a longer one pads everyone else.
            let left = (lo > 0 && fits(same[hi].0, items)).then(|| same[hi].0 - same[lo - 1].0);
            let right = (hi + 1 < same.len() && fits(same[hi + 1].0, items))
                .then(|| (same[hi + 1].0 - same[hi].0) * (hi - lo + 1));
            match (left, right) {
                (Some(l), Some(r)) if r < l => hi += 1,
                (Some(_), _) => lo -= 1,
                (None, Some(_)) => hi += 1,
                (None, None) => break,
            }
        }
        let mut picked: Vec<usize> = same[lo..=hi].iter().map(|&(_, i)| i).collect();
        picked.sort_unstable();
        let mut batch = Vec::with_capacity(picked.len());
        for &i in picked.iter().rev() {
            batch.push(self.entries.remove(i).expect("picked index is in range"));
        }
        // Back to arrival order, so the stable sort keeps it among equal costs.
        batch.reverse();
        batch.sort_by_key(|e| e.cost);
        batch
    }
}

/// How batches are formed and how much may wait.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most items in one batch.
    pub max_items: NonZeroUsize,
    /// Most padded tokens (`longest × items`) in one batch.
    pub max_tokens: usize,
    /// Longest time the oldest entry waits for a batch to fill while a compute thread is free.
    pub max_wait: Duration,
    /// Items queued or being computed at most; beyond it requests are refused with 503.
    pub queue_capacity: NonZeroUsize,
    /// Compute threads, each running one batch at a time.
    pub workers: NonZeroUsize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_items: NonZeroUsize::new(32).expect("non-zero"),
            max_tokens: 16_384,
            max_wait: Duration::from_millis(5),
            queue_capacity: NonZeroUsize::new(1024).expect("non-zero"),
            workers: NonZeroUsize::MIN,
        }
    }
}

/// The admission side of a model's queue, shared by request handlers.
pub struct Queue<B: Backend> {
    tx: mpsc::UnboundedSender<Vec<Entry<B>>>,
    seats: Arc<Semaphore>,
    capacity: usize,
    rate: Arc<Rate>,
    /// Items admitted with a deadline before the rate is known: two full batches per thread.
    cold_limit: usize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// Every seat is taken.
    #[error("the queue is full ({capacity} items)")]
    Full {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The request would not be answered before its deadline.
    #[error(
        "{ahead} items would be ahead of this request's last one: about {:.1} s at the measured \
         {rate:.1} items/s, beyond its {:.1} s deadline",
        wait.as_secs_f64(),
        deadline.as_secs_f64()
    )]
    TooSlow {
        /// Items queued or in compute, this request's included.
        ahead: usize,
        /// Measured items per second.
        rate: f64,
        /// Expected time to finish them.
        wait: Duration,
        /// The request's deadline.
        deadline: Duration,
    },
    /// The request has a deadline and no throughput has been measured yet.
    #[error(
        "{ahead} items would be queued before a large batch has been timed; until then requests \
         with a deadline are admitted up to {limit} items"
    )]
    Unmeasured {
        /// Items queued or in compute, this request's included.
        ahead: usize,
        /// Two full batches per compute thread.
        limit: usize,
    },
}

/// Smoothed items per second finished by all compute threads together (lock-free: handlers read
/// it on every admission, compute threads write it after every batch).
#[derive(Debug, Default)]
pub struct Rate {
    /// f64 bits of the estimate; 0 until the first batch.
    bits: AtomicU64,
}

impl Rate {
    /// Weight of the newest batch in the moving average.
    const ALPHA: f64 = 0.3;

    /// Records a batch of `items` that took `seconds` on one of `workers` threads.
    pub fn observe(&self, items: usize, seconds: f64, workers: usize) {
        if seconds <= 0.0 {
            return;
        }
        let now = items as f64 / seconds * workers as f64;
        // Lost updates between racing workers only drop one sample of an average.
        let new = match self.get() {
            Some(old) => old + Self::ALPHA * (now - old),
            None => now,
        };
        self.bits.store(new.to_bits(), Ordering::Relaxed);
    }

    /// The estimate, once a batch has finished.
    pub fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.bits.load(Ordering::Relaxed))).filter(|r| *r > 0.0)
    }
}

impl<B: Backend> Queue<B> {
    /// Reserves seats for `n` items at once, or refuses at once: when the seats are not free, or
    /// when the work already queued would, at the measured rate, outlast `deadline`.
    pub fn admit(
        &self,
        n: usize,
        deadline: Option<Duration>,
    ) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        if n == 0 {
            return Ok(None);
        }
        let full = Refused::Full {
            capacity: self.capacity,
        };
        if let Some(deadline) = deadline {
            let ahead = self.depth() + n;
            match self.rate.get() {
                Some(rate) => {
                    let wait = Duration::from_secs_f64(ahead as f64 / rate);
                    if wait > deadline {
                        return Err(Refused::TooSlow {
                            ahead,
                            rate,
                            wait,
                            deadline,
                        });
                    }
                }
                // Until a large batch has been timed, promise no more than two batches per
                // thread (one computing, one filling, so large batches can form and be timed):
                // a cold burst must not fill the queue with work nobody knows how long takes.
                None if ahead > self.cold_limit => {
                    return Err(Refused::Unmeasured {
                        ahead,
                        limit: self.cold_limit,
                    })
                }
                None => {}
            }
        }
        let n32 = u32::try_from(n).map_err(|_| full.clone())?;
        match self.seats.clone().try_acquire_many_owned(n32) {
            Ok(p) => Ok(Some(p)),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => Err(full),
        }
    }

    /// How long the measured throughput needs to finish what is queued and in compute now, once
    /// the rate is known.
    pub fn drain_time(&self) -> Option<Duration> {
        let rate = self.rate.get()?;
        Some(Duration::from_secs_f64(self.depth() as f64 / rate))
    }

    /// Items per second the compute threads have been finishing lately, once measured.
    pub fn rate(&self) -> Option<f64> {
        self.rate.get()
    }

    /// Hands admitted entries to the batcher; false once it has stopped.
    pub fn push(&self, entries: Vec<Entry<B>>) -> bool {
        self.tx.send(entries).is_ok()
    }

    /// Items queued or being computed.
    pub fn depth(&self) -> usize {
        self.capacity - self.seats.available_permits()
    }

    /// Items the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

struct Job<B: Backend> {
    batch: Vec<Entry<B>>,
    done: oneshot::Sender<()>,
    /// The batch is at least half of `max_items`, or entries were left waiting: only such
    /// batches measure the rate a deep queue drains at (lone small batches would understate it).
    saturated: bool,
}

/// Handles of a running batcher: await `finished` after dropping every [`Queue`] to drain it.
pub struct Running<B: Backend> {
    /// The admission side.
    pub queue: Arc<Queue<B>>,
    /// Completes once the queue is closed, drained and every compute thread has exited.
    pub finished: tokio::task::JoinHandle<()>,
}

/// Starts the batching task and its compute threads for one model; `name` labels metrics.
pub fn start<B: Backend>(backend: Arc<B>, config: BatchConfig, name: &str) -> Running<B> {
    let (tx, rx) = mpsc::unbounded_channel();
    let capacity = config.queue_capacity.get();
    let seats = Arc::new(Semaphore::new(capacity));
    let rate = Arc::new(Rate::default());
    let workers = config.workers.get();
    let queue = Arc::new(Queue {
        tx,
        seats: seats.clone(),
        capacity,
        rate: rate.clone(),
        cold_limit: 2 * config.max_items.get() * workers,
    });
    let (job_tx, job_rx) = std_mpsc::channel::<Job<B>>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut threads = Vec::new();
    for w in 0..workers {
        let (backend, job_rx, name) = (backend.clone(), job_rx.clone(), name.to_owned());
        let rate = rate.clone();
        let t = std::thread::Builder::new()
            .name(format!("sluice-compute-{name}-{w}"))
            .spawn(move || compute_loop(&*backend, &job_rx, &name, &rate, workers))
            .expect("spawning a compute thread");
        threads.push(t);
    }
    let name = name.to_owned();
    let finished = tokio::spawn(async move {
        batch_loop(rx, job_tx, config, seats, capacity, &name).await;
        // The job sender is gone, so the threads end after their current batch.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    });
    Running { queue, finished }
}

async fn batch_loop<B: Backend>(
    mut rx: mpsc::UnboundedReceiver<Vec<Entry<B>>>,
    jobs: std_mpsc::Sender<Job<B>>,
    config: BatchConfig,
    seats: Arc<Semaphore>,
    capacity: usize,
    name: &str,
) {
    let mut state = State::<B>::default();
    let mut in_flight = FuturesUnordered::new();
    let mut closed = false;
    let workers = config.workers.get();
    let depth = metrics::gauge!("sluice_queue_depth", "model" => name.to_owned());
    loop {
        let free = in_flight.len() < workers;
        let wake = state
            .oldest()
            .filter(|_| free)
            .map(|t| tokio::time::Instant::from_std(t + config.max_wait));
        tokio::select! {
            msg = rx.recv(), if !closed => match msg {
                Some(entries) => state.append(entries),
                None => closed = true,
            },
            Some(_) = in_flight.next(), if !in_flight.is_empty() => {}
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
        }
        // Take whatever else has arrived, so a burst is batched together.
        while let Ok(entries) = rx.try_recv() {
            state.append(entries);
        }
        while in_flight.len() < workers && !state.is_empty() {
            let now = Instant::now();
            let dropped = state.drop_dead(now);
            if dropped.disconnected > 0 {
                metrics::counter!("sluice_queue_dropped_total", "model" => name.to_owned(), "reason" => "disconnected")
                    .increment(dropped.disconnected as u64);
            }
            if dropped.expired > 0 {
                metrics::counter!("sluice_queue_dropped_total", "model" => name.to_owned(), "reason" => "deadline")
                    .increment(dropped.expired as u64);
            }
            let Some(oldest) = state.oldest() else { break };
            let ready =
                closed || state.len() >= config.max_items.get() || now >= oldest + config.max_wait;
            if !ready {
                break;
            }
            let batch = state.next_batch(config.max_items.get(), config.max_tokens);
            let saturated = batch.len() * 2 >= config.max_items.get() || !state.is_empty();
            let (done, finished) = oneshot::channel();
            if jobs
                .send(Job {
                    batch,
                    done,
                    saturated,
                })
                .is_err()
            {
                tracing::error!(model = name, "compute threads are gone; dropping the queue");
                return;
            }
            in_flight.push(finished);
        }
        depth.set((capacity - seats.available_permits()) as f64);
        if closed && state.is_empty() && in_flight.is_empty() {
            return;
        }
    }
}

fn compute_loop<B: Backend>(
    backend: &B,
    jobs: &Mutex<std_mpsc::Receiver<Job<B>>>,
    name: &str,
    rate: &Rate,
    workers: usize,
) {
    let labels = [("model", name.to_owned())];
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(Job {
            batch,
            done,
            saturated,
        }) = job
        else {
            return;
        };
        let started = Instant::now();
        let Some(key) = batch.first().map(|e| e.key.clone()) else {
            let _ = done.send(());
            continue;
        };
        let mut inputs = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for e in batch {
            metrics::histogram!("sluice_queue_wait_seconds", &labels)
                .record(started.duration_since(e.queued_at).as_secs_f64());
            inputs.push(e.input);
            waiting.push((e.reply, e.permit));
        }
        let items = inputs.len();
        let outputs = run_caught(backend, &key, inputs);
        let seconds = started.elapsed().as_secs_f64();
        if saturated {
            rate.observe(items, seconds, workers);
        }
        metrics::histogram!("sluice_batch_size", &labels).record(items as f64);
        metrics::histogram!("sluice_batch_duration_seconds", &labels).record(seconds);
        match outputs {
            Ok(outputs) => {
                let units: usize = outputs.iter().flatten().map(|o| backend.units(o)).sum();
                metrics::counter!("sluice_generated_tokens_total", &labels).increment(units as u64);
                for ((reply, permit), out) in waiting.into_iter().zip(outputs) {
                    if let Err(e) = &out {
                        tracing::warn!(model = name, error = %e, "an item failed alone");
                        metrics::counter!("sluice_item_failures_total", &labels).increment(1);
                    }
                    answer(reply, permit, out.map_err(EntryError::Backend));
                }
            }
            Err(e) => {
                tracing::error!(model = name, error = %e, items, "batch failed");
                metrics::counter!("sluice_batch_failures_total", &labels).increment(1);
                for (reply, permit) in waiting {
                    answer(reply, permit, Err(EntryError::Backend(e.clone())));
                }
            }
        }
        let _ = done.send(());
    }
}

/// Runs one batch; a panic in the model fails this batch, not the thread (later batches still
/// run), and a wrong number of outputs fails it as a whole.
#[allow(clippy::type_complexity)]
fn run_caught<B: Backend>(
    backend: &B,
    key: &B::Key,
    inputs: Vec<B::Item>,
) -> Result<Vec<Result<B::Done, BackendError>>, BackendError> {
    let items = inputs.len();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        backend
            .run(key, inputs)
            .map(|outs| {
                outs.into_iter()
                    .map(|o| o.map_err(BackendError::from))
                    .collect::<Vec<_>>()
            })
            .map_err(BackendError::from)
    }))
    .unwrap_or(Err(BackendError::Panicked));
    match result {
        Ok(o) if o.len() == items => Ok(o),
        Ok(o) => Err(BackendError::WrongCount {
            got: o.len(),
            want: items,
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Backend for Echo {
        type Item = usize;
        type Key = u8;
        type Done = usize;
        fn run(
            &self,
            _key: &u8,
            inputs: Vec<usize>,
        ) -> Result<Vec<Result<usize, ModelError>>, ModelError> {
            Ok(inputs.into_iter().map(Ok).collect())
        }
    }

    /// Fails input 13 alone, and panics on any batch holding input 99.
    struct Picky;
    impl Backend for Picky {
        type Item = usize;
        type Key = u8;
        type Done = usize;
        fn run(
            &self,
            _key: &u8,
            inputs: Vec<usize>,
        ) -> Result<Vec<Result<usize, ModelError>>, ModelError> {
            assert!(!inputs.contains(&99), "input 99");
            Ok(inputs
                .into_iter()
                .map(|i| match i {
                    13 => Err(ModelError::InvalidSettings("thirteen".into())),
                    i => Ok(i * 2),
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn an_item_that_fails_alone_leaves_its_batch_answered_and_a_panic_fails_only_its_batch() {
        let config = BatchConfig {
            max_wait: Duration::from_millis(20),
            ..BatchConfig::default()
        };
        let running = start(Arc::new(Picky), config, "picky");
        let submit = |inputs: Vec<usize>| {
            let seats = running.queue.admit(inputs.len(), None).unwrap();
            let mut seats = seats.unwrap();
            let mut rxs = Vec::new();
            let entries = inputs
                .into_iter()
                .map(|input| {
                    let (reply, rx) = oneshot::channel();
                    rxs.push(rx);
                    Entry {
                        input,
                        key: 0u8,
                        cost: 1,
                        reply,
                        queued_at: Instant::now(),
                        deadline: None,
                        permit: seats.split(1).unwrap(),
                    }
                })
                .collect();
            assert!(running.queue.push(entries));
            rxs
        };
        let mut answers = Vec::new();
        for rx in submit(vec![1, 13, 2]) {
            answers.push(rx.await.unwrap());
        }
        assert!(matches!(answers[0], Ok(2)));
        assert!(matches!(
            &answers[1],
            Err(EntryError::Backend(BackendError::Model(e))) if e.to_string().contains("thirteen")
        ));
        assert!(matches!(answers[2], Ok(4)));
        for rx in submit(vec![99, 3]) {
            assert!(matches!(
                rx.await.unwrap(),
                Err(EntryError::Backend(BackendError::Panicked))
            ));
        }
        // The compute thread survived the panic.
        let rx = submit(vec![5]).pop().unwrap();
        assert!(matches!(rx.await.unwrap(), Ok(10)));
        assert_eq!(running.queue.depth(), 0);
    }

    struct Fixture {
        seats: Arc<Semaphore>,
        receivers: Vec<oneshot::Receiver<Reply<Echo>>>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                seats: Arc::new(Semaphore::new(1000)),
                receivers: Vec::new(),
            }
        }
        fn entry(&mut self, key: u8, cost: usize) -> Entry<Echo> {
            let (reply, rx) = oneshot::channel();
            self.receivers.push(rx);
            Entry {
                input: self.receivers.len() - 1,
                key,
                cost,
                reply,
                queued_at: Instant::now(),
                deadline: None,
                permit: self.seats.clone().try_acquire_owned().unwrap(),
            }
        }
    }

    fn inputs(batch: &[Entry<Echo>]) -> Vec<usize> {
        batch.iter().map(|e| e.input).collect()
    }

    #[test]
    fn batch_always_holds_the_oldest_entry_and_only_its_key() {
        let mut f = Fixture::new();
        let mut s = State::default();
        let entries = vec![f.entry(1, 5), f.entry(2, 5), f.entry(1, 6), f.entry(1, 5)];
        s.append(entries);
        let b = s.next_batch(8, 1000);
        assert_eq!(inputs(&b), vec![0, 3, 2]);
        assert_eq!(s.len(), 1);
        assert_eq!(inputs(&s.next_batch(8, 1000)), vec![1]);
        assert!(s.next_batch(8, 1000).is_empty());
    }

    #[test]
    fn batch_picks_neighbours_by_length_up_to_max_items() {
        let mut f = Fixture::new();
        let mut s = State::default();
        // Oldest has cost 10; the closest costs are 9 and 11, then 12.
        let entries = vec![
            f.entry(0, 10),
            f.entry(0, 40),
            f.entry(0, 2),
            f.entry(0, 11),
            f.entry(0, 9),
            f.entry(0, 12),
        ];
        s.append(entries);
        let b = s.next_batch(3, 1000);
        assert_eq!(inputs(&b), vec![4, 0, 3]);
        let b = s.next_batch(3, 1000);
        assert_eq!(inputs(&b), vec![2, 5, 1]);
    }

    #[test]
    fn token_budget_counts_padding_to_the_longest() {
        let mut f = Fixture::new();
        let mut s = State::default();
        s.append(vec![
            f.entry(0, 10),
            f.entry(0, 10),
            f.entry(0, 10),
            f.entry(0, 30),
        ]);
        // 3 × 10 = 30 fits, a fourth (longest 30, 4 items = 120) does not.
        let b = s.next_batch(10, 40);
        assert_eq!(inputs(&b), vec![0, 1, 2]);
        // An entry longer than the budget still runs, alone.
        let b = s.next_batch(10, 20);
        assert_eq!(inputs(&b), vec![3]);
    }

    #[test]
    fn rate_is_a_moving_average_of_batch_throughput() {
        let r = Rate::default();
        assert_eq!(r.get(), None);
        r.observe(10, 1.0, 2);
        assert_eq!(r.get(), Some(20.0));
        r.observe(30, 1.0, 2);
        assert!((r.get().unwrap() - (20.0 + 0.3 * 40.0)).abs() < 1e-9);
    }

    #[tokio::test]
    async fn admission_refuses_work_that_would_outlast_the_deadline() {
        let running = start(Arc::new(Echo), BatchConfig::default(), "test");
        let q = &running.queue;
        assert_eq!(q.drain_time(), None, "no rate measured yet");
        // Nothing measured yet: two full batches (2 × 32 items) at most are promised.
        assert!(q
            .admit(64, Some(Duration::from_millis(1)))
            .unwrap()
            .is_some());
        assert_eq!(
            q.admit(65, Some(Duration::from_secs(60))).unwrap_err(),
            Refused::Unmeasured {
                ahead: 65,
                limit: 64
            }
        );
        assert!(q.admit(65, None).unwrap().is_some());
        q.rate.observe(10, 1.0, 1);
        let held = q.admit(15, Some(Duration::from_secs(2))).unwrap();
        // What is queued drains in depth / rate.
        assert_eq!(q.drain_time(), Some(Duration::from_millis(1500)));
        // 15 held + 10 asked = 25 items at 10/s = 2.5 s > 2 s.
        match q.admit(10, Some(Duration::from_secs(2))) {
            Err(Refused::TooSlow { ahead: 25, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(q.admit(10, Some(Duration::from_secs(3))).unwrap().is_some());
        assert!(q.admit(10, None).unwrap().is_some());
        drop(held);
        assert_eq!(
            q.admit(2000, None).unwrap_err(),
            Refused::Full { capacity: 1024 }
        );
    }

    #[test]
    fn disconnected_and_expired_entries_are_dropped_before_batching() {
        let mut f = Fixture::new();
        let mut s = State::default();
        let gone = f.entry(0, 1);
        let mut late = f.entry(0, 1);
        late.deadline = Some(Instant::now());
        let entries = vec![gone, late, f.entry(0, 1)];
        s.append(entries);
        // Client of entry 0 goes away.
        drop(f.receivers.remove(0));
        let dropped = s.drop_dead(Instant::now() + Duration::from_millis(1));
        assert_eq!(
            dropped,
            Dropped {
                disconnected: 1,
                expired: 1
            }
        );
        let batch = s.next_batch(10, 100);
        assert_eq!(inputs(&batch), vec![2]);
        // The expired entry was told why.
        assert!(matches!(
            f.receivers[0].try_recv(),
            Ok(Err(EntryError::DeadlineExceeded))
        ));
        // Seats of dropped entries are free again: 1000 minus the one still held by the batch.
        assert_eq!(f.seats.available_permits(), 999);
    }
}
