//! The server's budget of heavy statements (clones and drops) and its order
//! of precedence: a test waiting for a clone first, prepared clones next,
//! drops last.
//!
//! Why a budget: a 2-core server only gets slower past two at once
//! (measured with pgbench: clone+drop pairs went from 28/s at 1 to 43/s at
//! 2 and 44/s at 4, with twice the latency). Waiters are woken by a
//! notification each time what they wait on changes, not by polling.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// Clones and drops running at once on the server, whoever asks.
const HEAVY_PARALLEL: usize = 2;

/// Heavy-statement slots, and who is waiting for them.
pub(crate) struct Budget {
    heavy: Semaphore,
    /// Tests waiting for a clone made on demand now: background work waits.
    urgent: AtomicUsize,
    /// Prepared clones being made now: drops wait.
    refills: AtomicUsize,
    /// Told whenever a count falls or a caller's own condition may have
    /// changed ([`Budget::nudge`]).
    changed: Notify,
}

/// Counts one in a [`Budget`] count while it lives.
pub(crate) struct Counted<'a> {
    count: &'a AtomicUsize,
    changed: &'a Notify,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// A slot for a test's clone: counted as urgent from the request on.
pub(crate) struct Urgent<'a> {
    _slot: SemaphorePermit<'a>,
    _counted: Counted<'a>,
}

impl Budget {
    pub(crate) fn new() -> Budget {
        Budget {
            heavy: Semaphore::new(HEAVY_PARALLEL),
            urgent: AtomicUsize::new(0),
            refills: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn count<'a>(&'a self, count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Counted {
            count,
            changed: &self.changed,
        }
    }

    /// A slot for one heavy statement for a test waiting on it: first in
    /// line; background work waits from now until the slot is dropped.
    pub(crate) async fn urgent(&self) -> Urgent<'_> {
        let counted = self.count(&self.urgent);
        Urgent {
            _slot: self.acquire().await,
            _counted: counted,
        }
    }

    /// Counts a prepared clone being made (drops wait) while it lives.
    pub(crate) fn refilling(&self) -> Counted<'_> {
        self.count(&self.refills)
    }

    /// Wakes the waiters of [`Budget::background`]: what their `urgent`
    /// reads has changed.
    pub(crate) fn nudge(&self) {
        self.changed.notify_waiters();
    }

    /// A slot for a clone or drop in the background, once no test waits for
    /// an on-demand clone (claims first) and, `after_refills`, no prepared
    /// clone is being made (refills next, drops last), unless `urgent`
    /// (checked again at each [`Budget::nudge`]).
    pub(crate) async fn background(
        &self,
        after_refills: bool,
        urgent: impl Fn() -> bool,
    ) -> SemaphorePermit<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change right after it wakes us.
            changed.as_mut().enable();
            let busy = self.urgent.load(Ordering::SeqCst) > 0
                || (after_refills && self.refills.load(Ordering::SeqCst) > 0);
            if !busy || urgent() {
                break;
            }
            changed.await;
        }
        self.acquire().await
    }

    async fn acquire(&self) -> SemaphorePermit<'_> {
        self.heavy
            .acquire()
            .await
            .expect("the budget's semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Lets the spawned waiters run until they block (one thread: no clock).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn background_work_waits_for_urgent_clones_and_wakes_when_they_end() {
        let budget = std::sync::Arc::new(Budget::new());
        let urgent = budget.urgent().await;
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let _slot = budget.background(false, || false).await;
            })
        };
        settle().await;
        assert!(!waiting.is_finished(), "a drop waited while a test waited");
        drop(urgent);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the urgent clone ended")
            .unwrap();
        // A refill holds drops back, not other refills.
        let refill = budget.refilling();
        drop(budget.background(false, || false).await);
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drop_waits = {
            let (budget, flag) = (budget.clone(), flag.clone());
            tokio::spawn(async move {
                let _slot = budget
                    .background(true, || flag.load(Ordering::SeqCst))
                    .await;
            })
        };
        settle().await;
        assert!(!drop_waits.is_finished());
        flag.store(true, Ordering::SeqCst);
        budget.nudge();
        tokio::time::timeout(Duration::from_secs(5), drop_waits)
            .await
            .expect("a nudge lets an urgent drop through")
            .unwrap();
        drop(refill);
    }
}
