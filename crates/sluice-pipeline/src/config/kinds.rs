//! Stage kinds that crates above the engine add to config pipelines, and the boxed record stage
//! they build.

use std::sync::Arc;

use crate::stages::Record;
use crate::{ItemError, Stage, StageOptions};

use super::*;

/// A record stage defined outside this crate: a fresh instance per worker.
pub type RecordStage = Box<dyn Stage<In = Record, Out = Record>>;

/// Makes one [`RecordStage`] per worker.
pub type RecordStageFactory = Arc<dyn Fn() -> RecordStage + Send + Sync>;

/// Builds a stage of one kind from its `[[stage]]` table.
pub type StageBuilder = fn(&RawStage) -> Result<RecordStageFactory, ConfigError>;

/// Stage kinds that crates above this one add to config pipelines (`sluice-stages`' `translate`
/// and `model`): the engine depends on no model crate.
#[derive(Default, Clone)]
pub struct StageKinds {
    kinds: Vec<(&'static str, StageBuilder)>,
}

impl StageKinds {
    /// Adds a kind.
    pub fn with(mut self, kind: &'static str, build: StageBuilder) -> Self {
        self.kinds.push((kind, build));
        self
    }

    pub(super) fn get(&self, kind: &str) -> Option<StageBuilder> {
        self.kinds.iter().find(|(k, _)| *k == kind).map(|(_, b)| *b)
    }

    pub(super) fn names(&self) -> String {
        let mut all = vec!["exec"];
        all.extend(self.kinds.iter().map(|(k, _)| *k));
        all.join(", ")
    }
}

impl Stage for RecordStage {
    type In = Record;
    type Out = Record;

    fn name(&self) -> String {
        (**self).name()
    }

    fn options(&self) -> StageOptions {
        (**self).options()
    }

    fn setup(&mut self, worker: &crate::WorkerContext) -> Result<(), crate::StageError> {
        (**self).setup(worker)
    }

    fn process(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<Result<Record, ItemError>>, crate::StageError> {
        (**self).process(batch)
    }
}
