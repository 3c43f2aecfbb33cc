//! Locking that outlives a panicking stage: worker threads share state through mutexes, and one
//! stage's panic must not poison the run's bookkeeping for every other thread.

/// Locks a mutex, going on after a panic elsewhere: every guarded value here stays consistent
/// between statements, and a panicking stage is already reported by the engine.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
