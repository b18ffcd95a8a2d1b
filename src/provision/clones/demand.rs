//! The demand a clone pool is sized to: claims per second, tests holding a
//! clone and the template's measured clone time, and the clones in flight
//! (refills, and clones made for tests waiting in line). Kept in this
//! process, whatever stores the clones.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::sync::lock;

/// Clones made at once per template, in the background.
const REFILL_PARALLEL: usize = 2;
/// Prepared clones kept per template at most where no memory budget sizes
/// the pool in bytes (an external server), unless more were asked for.
pub(super) const MAX_PREPARED: usize = 16;
/// One clone's time before the template's first clone is measured (13 ms
/// for a small template's copy on an idle server, plus the warm-up).
const CLONE_SECS: f64 = 0.05;
/// Weight of the newest clone's time in the template's running mean.
const CLONE_SECS_WEIGHT: f64 = 0.3;

/// The demand and the refills in flight, per template.
#[derive(Default)]
pub(super) struct Demand {
    inner: Mutex<DemandState>,
}

#[derive(Default)]
struct DemandState {
    /// Refill tasks running, per template.
    refilling: HashMap<String, usize>,
    /// Prepared clones being made (reserved), per template.
    making: HashMap<String, usize>,
    /// Clones being made for tests waiting in line, per template.
    feeding: HashMap<String, usize>,
    /// One clone's time (its copy), running mean, per template.
    clone_secs: HashMap<String, f64>,
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
    /// claim faster or more at once than that covers: the tests holding a
    /// clone plus the claims expected within one clone's time of
    /// `template` (its measured time), at most `cap` (what the memory
    /// budget holds; [`MAX_PREPARED`] without one).
    fn target(s: &DemandState, template: &str, base: usize, cap: usize) -> usize {
        if base == 0 {
            return 0;
        }
        let now = Instant::now();
        let rate = s
            .recent
            .iter()
            .filter(|t| now.duration_since(**t) <= Duration::from_secs(1))
            .count();
        let secs = s.clone_secs.get(template).copied().unwrap_or(CLONE_SECS);
        let demand = s.live + (rate as f64 * secs).ceil() as usize;
        demand.max(base).min(cap.max(base))
    }

    /// One clone of `template` took `took` (its copy).
    pub(super) fn clone_took(&self, template: &str, took: Duration) {
        self.with(|s| {
            let secs = took.as_secs_f64();
            s.clone_secs
                .entry(template.to_string())
                .and_modify(|m| *m += CLONE_SECS_WEIGHT * (secs - *m))
                .or_insert(secs);
        });
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
    pub(super) fn reserve(&self, template: &str, ready: usize, base: usize, cap: usize) -> bool {
        self.with(|s| {
            let target = Demand::target(s, template, base, cap);
            let making = s.making.entry(template.to_string()).or_default();
            let go = ready + *making < target;
            if go {
                *making += 1;
            }
            go
        })
    }

    /// Whether `ready` clones plus those being made fall short of the target.
    pub(super) fn short(&self, template: &str, ready: usize, base: usize, cap: usize) -> bool {
        self.with(|s| {
            let making = s.making.get(template).copied().unwrap_or(0);
            ready + making < Demand::target(s, template, base, cap)
        })
    }

    /// Clones of `template` on their way: prepared ones being made and
    /// those made for tests waiting in line.
    pub(super) fn in_flight(&self, template: &str) -> usize {
        self.with(|s| {
            s.making.get(template).copied().unwrap_or(0)
                + s.feeding.get(template).copied().unwrap_or(0)
        })
    }

    /// Counts `n` clones made for tests waiting in line.
    pub(super) fn start_feeding(&self, template: &str, n: usize) {
        self.with(|s| *s.feeding.entry(template.to_string()).or_default() += n);
    }

    /// One clone made for a test waiting in line ended (made or failed).
    pub(super) fn end_feeding(&self, template: &str) {
        self.with(|s| {
            if let Some(n) = s.feeding.get_mut(template) {
                *n = n.saturating_sub(1);
            }
        });
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
        let target = |d: &Demand, base, cap| Demand::target(&lock(&d.inner), "t", base, cap);
        assert_eq!(target(&d, 0, MAX_PREPARED), 0, "0 asks for none");
        assert_eq!(target(&d, 2, MAX_PREPARED), 2);
        for _ in 0..5 {
            d.claimed();
        }
        assert_eq!(target(&d, 2, MAX_PREPARED), 5 + 1);
        // A slower clone covers more claims: 5 claims a second, 1 s a clone.
        d.clone_took("t", Duration::from_secs(1));
        assert_eq!(target(&d, 2, MAX_PREPARED), 5 + 5);
        assert_eq!(target(&d, 2, 7), 7, "the memory budget's cap");
        assert_eq!(target(&d, 3, 1), 3, "what was asked for stays");
        for _ in 0..100 {
            d.claimed();
        }
        assert_eq!(target(&d, 2, MAX_PREPARED), MAX_PREPARED);
        for _ in 0..105 {
            d.released();
        }
        assert_eq!(lock(&d.inner).live, 0);
        // Two refills at most per template; a reservation counts as made.
        let d = Demand::default();
        assert!(d.start_refill("t") && d.start_refill("t") && !d.start_refill("t"));
        assert!(d.reserve("t", 0, 1, 1) && !d.reserve("t", 0, 1, 1));
        d.start_feeding("t", 2);
        assert_eq!(d.in_flight("t"), 3, "refills and clones for waiting tests");
        d.unreserve("t");
        d.end_feeding("t");
        assert_eq!(d.in_flight("t"), 1);
    }
}
