//! The envelope every item travels in between the source, the stages and the sink: shared by
//! every part of the engine, so it lives apart from any of them.

use std::sync::Arc;

/// An item's key: names it in failures, decides its shard and whether it is already done.
pub type Key = Arc<str>;

/// An item on its way through a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// Position among the items this run processes, used to restore order when asked.
    pub seq: u64,
    /// The item's key.
    pub key: Key,
    /// The item.
    pub value: T,
}
