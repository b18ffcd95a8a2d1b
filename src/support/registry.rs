//! Process-wide registries: one async once-cell per key (the run's stack per
//! run key, a template per stack incarnation, a worker per external admin
//! URL). Values are initialised once, by the first caller; the others wait
//! for it. They hold plain data or handles that outlive every test runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use once_cell::sync::Lazy;
use tokio::sync::OnceCell;

use crate::support::sync::lock;

/// A map from keys to once-initialised values (see the module).
pub(crate) struct OnceMap<T> {
    cells: Lazy<Mutex<HashMap<String, Arc<OnceCell<T>>>>>,
}

impl<T> OnceMap<T> {
    /// An empty registry, usable in a `static`.
    pub(crate) const fn new() -> Self {
        OnceMap {
            cells: Lazy::new(|| Mutex::new(HashMap::new())),
        }
    }

    /// The cell of `key`; a fresh one when `stale` says the value there is
    /// no longer usable (e.g. a stack that died).
    pub(crate) fn cell(&self, key: &str, stale: impl FnOnce(&T) -> bool) -> Arc<OnceCell<T>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        let mut cells = lock(&self.cells);
        let cell = cells.entry(key.to_string()).or_default();
        if cell.get().is_some_and(stale) {
            *cell = Arc::default();
        }
        cell.clone()
    }
}
