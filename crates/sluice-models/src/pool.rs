//! Keeping rayon's workers awake through a run of many short parallel products.
//!
//! A decoding step is about 130 parallel regions of tens to hundreds of microseconds, with short
//! serial parts between them. Rayon parks an idle worker after a few dozen polls, and waking it
//! takes about as long as one region, so the thread that drives decoding used to do most of each
//! region alone. OpenMP runtimes (under CTranslate2 and torch) avoid this by busy-waiting
//! between regions; rayon has no such setting, so [`run_hot`] does it from the outside: the
//! other workers run a loop that executes pending pool work the moment it is queued, until the
//! driving closure returns.

use std::sync::atomic::{AtomicBool, Ordering};

/// Idle polls a keeper makes with a CPU pause between them before it also yields its core to
/// the operating system between polls (so another runnable thread is not kept waiting).
const SPIN_POLLS: u32 = 1 << 12;

/// Runs `f` on a worker of the current rayon pool while every other worker stays awake taking
/// the parallel work `f` queues, and returns its result.
///
/// The other workers busy-wait for as long as `f` runs: call it around work that keeps the
/// pool busy (a whole generation), not around waits. They run any pending job of the pool, so
/// other work submitted meanwhile is not held up; one that they pick up (another generation,
/// say) delays this call's return until it is done, as any rayon join can.
pub fn run_hot<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let driver = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let done = &done;
            s.spawn(move |_| {
                // A keeper picked up by the driving thread itself (while it waits for stolen
                // work) would spin on top of the closure it is meant to serve.
                if rayon::current_thread_index() == driver {
                    return;
                }
                let mut idle = 0u32;
                while !done.load(Ordering::Acquire) {
                    if matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                        idle = 0;
                    } else if idle < SPIN_POLLS {
                        idle += 1;
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            });
        }
        // Released on return and on unwinding alike: the scope waits for the keepers.
        let _release = Release(&done);
        f()
    })
}

/// Sets its flag when dropped.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    #[test]
    fn returns_the_result_of_parallel_work_on_any_pool_size() {
        let want: u64 = (0..100_000u64).map(|i| i * i).sum();
        for threads in [1, 2, 4] {
            let got = pool(threads).install(|| {
                run_hot(|| {
                    (0..50)
                        .map(|_| (0..100_000u64).into_par_iter().map(|i| i * i).sum::<u64>())
                        .max()
                })
            });
            assert_eq!(got, Some(want), "{threads} threads");
        }
    }

    #[test]
    fn runs_from_outside_the_pool_and_nested() {
        assert_eq!(run_hot(|| run_hot(|| 7)), 7);
        let p = pool(3);
        assert_eq!(p.install(|| run_hot(|| run_hot(|| 8))), 8);
    }

    #[test]
    fn a_panic_in_the_driver_reaches_the_caller_and_releases_the_keepers() {
        let p = pool(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.install(|| run_hot(|| panic!("driver failed")))
        }));
        assert!(r.is_err());
        // The pool is usable afterwards: the keepers stopped.
        assert_eq!(p.install(|| run_hot(|| 1 + 1)), 2);
    }
}
