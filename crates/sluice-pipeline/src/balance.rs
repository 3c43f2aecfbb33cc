//! Worker allocation for one resource pool (CPU cores or GPUs).
//!
//! A linear pipeline runs as fast as its slowest stage, so the pool is split to maximise the
//! slowest stage's throughput: every balanced stage gets one worker, then workers go one at a time
//! to whichever stage is currently slowest, while the pool has room for that stage's worker. The
//! result is workers ∝ seconds per item per worker (∝ 1 / per-worker speed), rounded so that the
//! bottleneck is as fast as the pool allows. Pure and synchronous so it is tested without threads.

/// What the balancer knows about one stage in a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Pool units (cores or GPUs) one worker occupies.
    pub cost: f64,
    /// Measured busy seconds per item for one worker; `None` until a batch has been timed.
    pub secs_per_item: Option<f64>,
    /// Workers running now, kept as they are while the stage is unmeasured.
    pub current: usize,
}

/// Target worker counts, in the order of `demands`, for a pool of `capacity` units.
///
/// Every stage keeps at least one worker even when the pool is smaller than the number of stages
/// (the pipeline could not run otherwise); unmeasured stages keep their current count.
pub fn allocate(capacity: f64, demands: &[Demand]) -> Vec<usize> {
    let mut workers: Vec<usize> = demands
        .iter()
        .map(|d| {
            if d.secs_per_item.is_some() {
                1
            } else {
                d.current.max(1)
            }
        })
        .collect();
    let mut used: f64 = demands
        .iter()
        .zip(&workers)
        .map(|(d, &w)| d.cost * w as f64)
        .sum();
    // Small tolerance so that e.g. 8 workers of 0.1 CPU fit in 0.8 CPUs despite rounding.
    const EPS: f64 = 1e-9;
    loop {
        let slowest = demands
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                d.secs_per_item
                    .map(|t| (i, workers[i] as f64 / t.max(1e-12)))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, _)) = slowest else { break };
        if used + demands[i].cost > capacity + EPS {
            break;
        }
        // A worker that costs nothing never fills the pool: such a stage stops at one worker
        // per unit of the pool, as its fixed maximum does.
        if demands[i].cost <= 0.0 && workers[i] as f64 >= capacity.max(1.0) {
            break;
        }
        workers[i] += 1;
        used += demands[i].cost;
    }
    workers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(cost: f64, t: f64) -> Demand {
        Demand {
            cost,
            secs_per_item: Some(t),
            current: 1,
        }
    }

    #[test]
    fn workers_are_proportional_to_seconds_per_item() {
        let got = allocate(8.0, &[measured(1.0, 0.001), measured(1.0, 0.003)]);
        assert_eq!(got, vec![2, 6]);
    }

    #[test]
    fn every_stage_keeps_one_worker_in_a_small_pool() {
        let got = allocate(
            2.0,
            &[measured(1.0, 1.0), measured(1.0, 1.0), measured(1.0, 5.0)],
        );
        assert_eq!(got, vec![1, 1, 1]);
    }

    #[test]
    fn unmeasured_stages_keep_their_workers_and_their_share() {
        let demands = [
            Demand {
                cost: 1.0,
                secs_per_item: None,
                current: 3,
            },
            measured(1.0, 0.01),
            measured(1.0, 0.02),
        ];
        assert_eq!(allocate(8.0, &demands), vec![3, 2, 3]);
    }

    #[test]
    fn a_stage_that_costs_nothing_is_bounded_by_the_pool_size() {
        // It was an endless loop: adding a free worker never filled the pool.
        let got = allocate(2.0, &[measured(0.0, 1.0)]);
        assert_eq!(got, vec![2]);
        let got = allocate(2.0, &[measured(1.0, 0.001), measured(0.0, 1.0)]);
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn fractional_costs_fill_the_pool_exactly() {
        let got = allocate(1.0, &[measured(0.25, 0.5), measured(0.25, 0.5)]);
        assert_eq!(got, vec![2, 2]);
    }

    #[test]
    fn the_bottleneck_stops_growing_when_its_worker_does_not_fit() {
        // The slow stage needs a whole GPU per worker; one is left after the first two.
        let got = allocate(3.0, &[measured(1.0, 1.0), measured(2.0, 10.0)]);
        assert_eq!(got, vec![1, 1]);
    }
}
