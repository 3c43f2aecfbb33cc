//! Balancing workers between stages by measured speed, within the run's CPU and GPU pools.

use super::*;
use crate::balance::{allocate, Demand};
use crate::Workers;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Something that can change a stage's worker count while it runs.
pub(crate) trait Resize: Send + Sync {
    fn resize(&self, workers: usize);
}

/// Pool sizes the balancer works within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pools {
    pub cpus: f64,
    pub gpus: f64,
}

/// A started stage, with the handle that resizes it when it is balanced.
pub(crate) type LiveStage = (Arc<StageStats>, Option<Arc<dyn Resize>>);

/// Balances the auto-sized stages of each pool; fixed stages take their share first.
pub(crate) fn rebalance(stages: &[LiveStage], pools: Pools) {
    for gpu_pool in [false, true] {
        let cost = |s: &StageStats| {
            if gpu_pool {
                s.options.gpus
            } else {
                s.options.cpus
            }
        };
        let in_pool: Vec<_> = stages
            .iter()
            .filter(|(s, _)| s.options.uses_gpu() == gpu_pool)
            .collect();
        let capacity = if gpu_pool { pools.gpus } else { pools.cpus };
        let fixed: f64 = in_pool
            .iter()
            .filter_map(|(s, _)| s.options.workers.fixed().map(|n| n as f64 * cost(s)))
            .sum();
        let auto: Vec<_> = in_pool
            .iter()
            .filter(|(s, _)| s.options.workers == Workers::Auto)
            .filter_map(|(s, r)| r.as_ref().map(|r| (s, r)))
            .collect();
        let demands: Vec<Demand> = auto
            .iter()
            .map(|(s, _)| Demand {
                cost: cost(s),
                secs_per_item: s.measure(),
                current: s.target.load(Relaxed).max(1),
            })
            .collect();
        let targets = allocate((capacity - fixed).max(0.0), &demands);
        for ((s, control), n) in auto.iter().zip(targets) {
            if n != s.target.load(Relaxed) {
                tracing::debug!(stage = %s.name, from = s.target.load(Relaxed), to = n, "rebalance");
                control.resize(n);
            }
        }
    }
}
