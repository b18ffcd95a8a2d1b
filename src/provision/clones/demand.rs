//! The demand a clone pool is sized to: claims per second and tests holding
//! a clone, and the refills in flight. Kept in this process, whatever
//! stores the clones.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::sync::lock;

/// Clones made at once per template, in the background.
const REFILL_PARALLEL: usize = 2;
/// Prepared clones kept per template at most, whatever the demand (unless
/// more were asked for): each costs a database's worth of tmpfs (~8 MB).
const MAX_PREPARED: usize = 16;
/// How long making one clone takes, roughly (13 ms for the copy, measured,
/// plus the warm-up): claims expected within that time are the pool's
/// headroom.
const CLONE_SECS: f64 = 0.05;

/// The demand and the refills in flight, per template.
#[derive(Default)]
pub(super) struct Demand {
    inner: Mutex<DemandState>,
}

#[derive(Default)]
struct DemandState {
    /// Refill tasks running, per template.
    refilling: HashMap<String, usize>,
    /// Clones being made, per template.
    making: HashMap<String, usize>,
    /// Claims of the last second.
    recent: VecDeque<Instant>,
    /// Tests holding a clone now.
    live: usize,
}

impl Demand {
    fn with<T>(&self, f: impl FnOnce(&mut DemandState) -> T) -> T {
        f(&mut lock(&self.inner))
    }

    /// A test claims a clone (once per test).
    pub(super) fn claimed(&self) {
        self.with(|s| {
            let now = Instant::now();
            s.recent.push_back(now);
            while s
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
            {
                s.recent.pop_front();
            }
            s.live += 1;
        });
    }

    /// A test released its clone.
    pub(super) fn released(&self) {
        self.with(|s| s.live = s.live.saturating_sub(1));
    }

    /// Clones to keep ready: at least `base` (0: none), more when tests
    /// claim faster or more at once than that covers.
    fn target(s: &DemandState, base: usize) -> usize {
        if base == 0 {
            return 0;
        }
        let now = Instant::now();
        let rate = s
            .recent
            .iter()
            .filter(|t| now.duration_since(**t) <= Duration::from_secs(1))
            .count();
        let demand = s.live + (rate as f64 * CLONE_SECS).ceil() as usize;
        demand.max(base).min(MAX_PREPARED.max(base))
    }

    /// Whether the caller should start a refill task (fewer than
    /// `REFILL_PARALLEL` run).
    pub(super) fn start_refill(&self, template: &str) -> bool {
        self.with(|s| {
            let n = s.refilling.entry(template.to_string()).or_default();
            let start = *n < REFILL_PARALLEL;
            if start {
                *n += 1;
            }
            start
        })
    }

    pub(super) fn end_refill(&self, template: &str) {
        self.with(|s| {
            if let Some(n) = s.refilling.get_mut(template) {
                *n = n.saturating_sub(1);
            }
        });
    }

    /// Reserves the making of one clone when `ready` plus those being made
    /// fall short of the target.
    pub(super) fn reserve(&self, template: &str, ready: usize, base: usize) -> bool {
        self.with(|s| {
            let target = Demand::target(s, base);
            let making = s.making.entry(template.to_string()).or_default();
            let go = ready + *making < target;
            if go {
                *making += 1;
            }
            go
        })
    }

    /// Whether `ready` clones plus those being made fall short of the target.
    pub(super) fn short(&self, template: &str, ready: usize, base: usize) -> bool {
        self.with(|s| {
            let making = s.making.get(template).copied().unwrap_or(0);
            ready + making < Demand::target(s, base)
        })
    }

    /// Whether a clone of `template` is being made in the background.
    pub(super) fn making(&self, template: &str) -> bool {
        self.with(|s| s.making.get(template).is_some_and(|n| *n > 0))
    }

    pub(super) fn unreserve(&self, template: &str) {
        self.with(|s| {
            if let Some(n) = s.making.get_mut(template) {
                *n = n.saturating_sub(1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_grows_with_tests_holding_clones_and_stays_bounded() {
        let d = Demand::default();
        assert_eq!(Demand::target(&lock(&d.inner), 0), 0, "0 asks for none");
        assert_eq!(Demand::target(&lock(&d.inner), 2), 2);
        for _ in 0..5 {
            d.claimed();
        }
        assert_eq!(Demand::target(&lock(&d.inner), 2), 5 + 1);
        for _ in 0..100 {
            d.claimed();
        }
        assert_eq!(Demand::target(&lock(&d.inner), 2), MAX_PREPARED);
        for _ in 0..105 {
            d.released();
        }
        assert_eq!(lock(&d.inner).live, 0);
        // Two refills at most per template; a reservation counts as made.
        let d = Demand::default();
        assert!(d.start_refill("t") && d.start_refill("t") && !d.start_refill("t"));
        assert!(d.reserve("t", 0, 1) && !d.reserve("t", 0, 1) && d.making("t"));
        d.unreserve("t");
        assert!(!d.making("t"));
    }
}
