//! Stages and helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use sluice_pipeline::{ItemError, Stage, StageError, StageOptions, WorkerContext};

/// What a `Probe` does with an item.
pub type Behaviour = Arc<dyn Fn(u64) -> Result<u64, ItemError> + Send + Sync>;

/// A configurable stage over `u64` items that counts its setups.
#[derive(Clone)]
pub struct Probe {
    pub name: String,
    pub options: StageOptions,
    pub per_item: Duration,
    pub behaviour: Behaviour,
    pub setups: Arc<AtomicUsize>,
}

impl Probe {
    pub fn new(
        name: &str,
        options: StageOptions,
        behaviour: impl Fn(u64) -> Result<u64, ItemError> + Send + Sync + 'static,
    ) -> Self {
        Probe {
            name: name.into(),
            options,
            per_item: Duration::ZERO,
            behaviour: Arc::new(behaviour),
            setups: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn sleeping(mut self, per_item: Duration) -> Self {
        self.per_item = per_item;
        self
    }
}

impl Stage for Probe {
    type In = u64;
    type Out = u64;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn setup(&mut self, _worker: &WorkerContext) -> Result<(), StageError> {
        self.setups.fetch_add(1, SeqCst);
        Ok(())
    }

    fn process(&mut self, batch: &[u64]) -> Result<Vec<Result<u64, ItemError>>, StageError> {
        if !self.per_item.is_zero() {
            std::thread::sleep(self.per_item * batch.len() as u32);
        }
        Ok(batch.iter().map(|&x| (self.behaviour)(x)).collect())
    }
}

/// Options with a batch size and a fixed worker count.
pub fn fixed(batch: usize, workers: usize) -> StageOptions {
    StageOptions::default()
        .batch_size(batch)
        .workers(sluice_pipeline::Workers::Fixed(workers))
}
