//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, even when a thread panicked while holding it: the data
/// behind the crate's mutexes (queues, counters, caches) stays valid after
/// a panic, and a test's panic must not poison the next test's fixture.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
