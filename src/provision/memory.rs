//! The stack's memory budget as the worker keeps it: every test database
//! is a full copy of its template on the stack's tmpfs, so databases are
//! counted in bytes before each clone. A refill starts only while the
//! budget keeps room for a test's clone besides; a test's clone waits for
//! room (bounded), and meanwhile drops run before anything else.
//!
//! What is counted: the server's own catalog (`pg_database`, one query):
//! each template at its `pg_database_size` (measured once per template),
//! each clone at its template's size, any other test database at an empty
//! database's; plus the clones this process is making now. Other
//! processes' clones in flight are not seen: the tmpfs, sized from the same
//! budget, is the hard bound (`target::memory`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::connect::quote::quote_literal;
use crate::contract::{self, TEMPLATE_PREFIX};
use crate::error::{Error, Result};
use crate::provision::admin::Admin;
use crate::support::sync::lock;
use crate::target::memory::{databases_share, human_bytes};

/// SQLSTATE `disk_full`: "could not extend file ...: No space left on
/// device" when a statement fills the databases' tmpfs.
const DISK_FULL: &str = "53100";

/// An empty database's size on the stack (PostgreSQL 17: ~7.5 MB).
const EMPTY_DATABASE: u64 = 8 << 20;
/// How long a test waits for room before its error.
const ROOM_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting test counts again (drops of other processes, or of
/// the janitor, tell nobody here).
const ROOM_POLL: Duration = Duration::from_millis(100);

/// Whether `error`, or what caused it, is the server's `disk_full`
/// (SQLSTATE 53100): a statement filled the databases' tmpfs.
pub(crate) fn disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            if db.code().as_deref() == Some(DISK_FULL) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// What filled the databases' tmpfs: building the template, or cloning it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filling {
    /// Its migrations or seeds (its size then is a lower bound).
    Build,
    /// A clone of it.
    Clone,
}

/// The typed error for a template build or clone that filled the stack's
/// databases' tmpfs (sized from `budget`): `bytes` of the template (a
/// lower bound while building), with one clone per test running at once
/// (`tests`) what the budget would need to hold, and the ways out.
pub(crate) fn filled(
    template: &str,
    bytes: u64,
    budget: u64,
    tests: usize,
    filling: Filling,
) -> Error {
    let needed = bytes.saturating_mul(1 + tests as u64);
    let what = match filling {
        Filling::Build => format!(
            "building the template {template} filled the stack's databases' tmpfs (sized from \
             the budget): the template is at least {}, the room the other databases left it",
            human_bytes(bytes)
        ),
        Filling::Clone => format!(
            "a clone of the template {template} ({}) found the stack's databases' tmpfs (sized \
             from the budget) full",
            human_bytes(bytes)
        ),
    };
    Error::MemoryBudget {
        template: template.to_string(),
        template_bytes: bytes,
        needed_bytes: needed,
        budget_bytes: budget,
        reason: format!(
            "{what}; {tests} tests at once need it and one clone each: at least {} of \
             databases, and the budget of {} holds {} of them (the rest is the server's own \
             share)",
            human_bytes(needed),
            human_bytes(budget),
            human_bytes(databases_share(budget))
        ),
    }
}

/// What the budget knows, per server.
pub(crate) struct Memory {
    /// The stack's budget in bytes; `None`: no budget (an external server).
    budget: Option<u64>,
    /// Template sizes in bytes, measured once each.
    sizes: Mutex<HashMap<String, u64>>,
    /// Counting and reserving, one caller at a time.
    admission: tokio::sync::Mutex<Estimate>,
    /// Set while a clone is refused for want of room: drops run at once,
    /// before clones.
    pressed: AtomicBool,
    /// Told when a drop of this process ends.
    freed: tokio::sync::Notify,
    /// Bytes of the clones this process is making now (not in the catalog
    /// until their `CREATE DATABASE` commits).
    making: AtomicU64,
}

/// The bytes counted at the last look, and those admitted since.
#[derive(Default)]
struct Estimate {
    /// Databases' bytes at the last count, plus what was admitted since.
    bytes: u64,
    /// Whether `bytes` was ever counted.
    counted: bool,
}

/// Bytes held for a clone being made; given back when dropped.
pub(crate) struct Room<'a> {
    memory: &'a Memory,
    bytes: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        // The clone exists now (the catalog counts it) or failed.
        self.memory.making.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// What a test's clone cost in waiting for room.
pub(crate) struct Admitted<'a> {
    pub _room: Room<'a>,
    pub waited: Duration,
}

impl Memory {
    /// `budget`: the stack's, in bytes; `None` for no budget.
    pub(crate) fn new(budget: Option<u64>) -> Memory {
        Memory {
            budget,
            sizes: Mutex::default(),
            admission: tokio::sync::Mutex::default(),
            pressed: AtomicBool::new(false),
            freed: tokio::sync::Notify::new(),
            making: AtomicU64::new(0),
        }
    }

    /// The stack's budget in bytes, if there is one.
    pub(crate) fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The bytes the databases may take, if there is a budget.
    fn share(&self) -> Option<u64> {
        self.budget.map(databases_share)
    }

    /// Prepared clones of a template of `bytes` the pool may keep: half the
    /// databases' share (the other half for the templates, the tests'
    /// databases and those waiting to be dropped), at least one; `None`
    /// without a budget or a measured size.
    pub(crate) fn pool_cap(&self, bytes: Option<u64>) -> Option<usize> {
        let (share, bytes) = (self.share()?, bytes.filter(|&b| b > 0)?);
        Some(
            usize::try_from(share / 2 / bytes)
                .unwrap_or(usize::MAX)
                .max(1),
        )
    }

    /// Databases waiting to be dropped the budget lets wait: a quarter of
    /// the databases' share in copies of the largest template measured
    /// (the pool may take half, [`Memory::pool_cap`]); `None` without a
    /// budget or a measured size.
    pub(crate) fn deferrable_drops(&self) -> Option<usize> {
        let share = self.share()?;
        let largest = lock(&self.sizes)
            .values()
            .copied()
            .max()
            .filter(|&b| b > 0)?;
        Some(usize::try_from(share / 4 / largest).unwrap_or(usize::MAX))
    }

    /// Whether a clone is waiting for room: drops go first, at once.
    pub(crate) fn pressed(&self) -> bool {
        self.pressed.load(Ordering::SeqCst)
    }

    /// A drop of this process ended: waiting clones count again.
    pub(crate) fn freed(&self) {
        self.freed.notify_waiters();
    }

    /// `template`'s size in bytes, measured once; `None` when it is not
    /// built (yet) or there is no budget to count it in.
    pub(crate) async fn template_bytes(
        &self,
        admin: &Admin,
        template: &str,
    ) -> Result<Option<u64>> {
        if self.budget.is_none() {
            return Ok(None);
        }
        if let Some(bytes) = self.measured_bytes(template) {
            return Ok(Some(bytes));
        }
        let sql = format!(
            "select pg_database_size(oid) from pg_database where datname = {} and datistemplate",
            quote_literal(template)
        );
        let rows = admin.query(&sql).await?;
        let bytes = rows
            .first()
            .and_then(|r| r.try_get::<i64, _>(0).ok())
            .and_then(|b| u64::try_from(b).ok());
        if let Some(bytes) = bytes {
            lock(&self.sizes).insert(template.to_string(), bytes);
        }
        Ok(bytes)
    }

    /// `template`'s size in bytes, if measured already.
    pub(crate) fn measured_bytes(&self, template: &str) -> Option<u64> {
        lock(&self.sizes).get(template).copied()
    }

    /// The templates measured so far and their sizes in bytes.
    pub(crate) fn measured(&self) -> Vec<(String, u64)> {
        lock(&self.sizes)
            .iter()
            .map(|(t, b)| (t.clone(), *b))
            .collect()
    }

    /// Fails when the budget cannot hold `template` (`bytes`) and one clone
    /// per test running at once (`tests`), with the sizes and the ways out.
    pub(crate) fn check_fits(&self, template: &str, bytes: u64, tests: usize) -> Result<()> {
        let (Some(budget), Some(share)) = (self.budget, self.share()) else {
            return Ok(());
        };
        let needed = bytes.saturating_mul(1 + tests as u64);
        if needed <= share {
            return Ok(());
        }
        Err(Error::MemoryBudget {
            template: template.to_string(),
            template_bytes: bytes,
            needed_bytes: needed,
            budget_bytes: budget,
            reason: format!(
                "the template {template} is {}; {tests} tests at once need it and one clone each: \
                 {} of databases, and the budget of {} holds {} of them (the rest is the \
                 server's own share)",
                human_bytes(bytes),
                human_bytes(needed),
                human_bytes(budget),
                human_bytes(share)
            ),
        })
    }

    /// The bytes the test databases take now (one catalog query).
    pub(crate) async fn used(&self, admin: &Admin) -> Result<u64> {
        let pattern = format!("{}%", "pgbf\\_");
        let sql = format!(
            "select datname::text, datistemplate from pg_database where datname like {}",
            quote_literal(&pattern)
        );
        let rows = admin.query(&sql).await?;
        let mut names = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(0).map_err(|e| Error::Sql {
                action: "counting the stack's databases".into(),
                source: e,
            })?;
            let template: bool = row.try_get(1).unwrap_or(false);
            names.push((name, template));
        }
        for (name, _) in names
            .iter()
            .filter(|(n, t)| *t && n.starts_with(TEMPLATE_PREFIX))
        {
            self.template_bytes(admin, name).await?;
        }
        let sizes = lock(&self.sizes).clone();
        let stems: Vec<(String, u64)> = sizes
            .iter()
            .map(|(t, b)| (format!("pgbf_{}_", contract::clone_stem(t)), *b))
            .collect();
        let bytes = names
            .iter()
            .map(|(name, template)| match sizes.get(name) {
                Some(&b) if *template => b,
                _ => stems
                    .iter()
                    .find(|(stem, _)| name.starts_with(stem.as_str()))
                    .map_or(EMPTY_DATABASE, |(_, b)| *b),
            })
            .sum::<u64>();
        Ok(bytes + self.making.load(Ordering::SeqCst))
    }

    /// Room for one prepared clone of `bytes`, if the budget holds it and a
    /// test's clone besides; `None`: no refill now (drops are pressed).
    pub(crate) async fn for_refill(&self, admin: &Admin, bytes: u64) -> Result<Option<Room<'_>>> {
        let Some(share) = self.share() else {
            return Ok(Some(self.room(0)));
        };
        let mut estimate = self.admission.lock().await;
        let fits = self
            .fits(&mut estimate, admin, share, bytes.saturating_mul(2))
            .await?;
        if !fits {
            self.press(true);
            return Ok(None);
        }
        estimate.bytes += bytes;
        Ok(Some(self.room(bytes)))
    }

    /// Room for a test's clone of `template` (`bytes`): waits while the
    /// budget is full (drops run first meanwhile), at most [`ROOM_WAIT`].
    pub(crate) async fn for_test(
        &self,
        admin: &Admin,
        template: &str,
        bytes: u64,
    ) -> Result<Admitted<'_>> {
        let Some(share) = self.share() else {
            return Ok(Admitted {
                _room: self.room(0),
                waited: Duration::ZERO,
            });
        };
        let started = Instant::now();
        let mut estimate = self.admission.lock().await;
        let mut refused = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.fits(&mut estimate, admin, share, bytes).await? {
                estimate.bytes += bytes;
                // Zero unless it was refused room at least once.
                let waited = if refused {
                    started.elapsed()
                } else {
                    Duration::ZERO
                };
                if refused {
                    tracing::debug!(
                        template,
                        waited_ms = waited.as_secs_f64() * 1e3,
                        "a test's clone waited for room in the memory budget"
                    );
                }
                return Ok(Admitted {
                    _room: self.room(bytes),
                    waited,
                });
            }
            refused = true;
            self.press(true);
            admin.budget().nudge();
            if started.elapsed() >= ROOM_WAIT {
                let used = estimate.bytes;
                let budget = self.budget.unwrap_or_default();
                return Err(Error::MemoryBudget {
                    template: template.to_string(),
                    template_bytes: bytes,
                    needed_bytes: used + bytes,
                    budget_bytes: budget,
                    reason: format!(
                        "a test waited {ROOM_WAIT:?} for room for a clone of {template} ({}): \
                         the stack's databases take {} of the {} the budget of {} leaves them, \
                         and nothing this process drops frees enough (tests holding their \
                         databases, or other processes')",
                        human_bytes(bytes),
                        human_bytes(used),
                        human_bytes(share),
                        human_bytes(budget)
                    ),
                });
            }
            let _ = tokio::time::timeout(ROOM_POLL, freed).await;
            // Counted afresh at the next look.
            estimate.counted = false;
        }
    }

    /// Whether `bytes` more fit: on the estimate while it is far from the
    /// share (no query), else on a fresh count.
    async fn fits(
        &self,
        estimate: &mut Estimate,
        admin: &Admin,
        share: u64,
        bytes: u64,
    ) -> Result<bool> {
        if !estimate.counted || estimate.bytes + bytes > share / 2 {
            estimate.bytes = self.used(admin).await?;
            estimate.counted = true;
        }
        let fits = estimate.bytes + bytes <= share;
        if fits && estimate.bytes + 2 * bytes <= share {
            self.press(false);
        }
        Ok(fits)
    }

    fn press(&self, on: bool) {
        self.pressed.store(on, Ordering::SeqCst);
    }

    fn room(&self, bytes: u64) -> Room<'_> {
        self.making.fetch_add(bytes, Ordering::SeqCst);
        Room {
            memory: self,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_wait_in_a_quarter_of_the_databases_share() {
        let memory = Memory::new(Some(6026 << 20));
        assert_eq!(memory.deferrable_drops(), None, "no template measured yet");
        let share = databases_share(6026 << 20);
        lock(&memory.sizes).insert("pgbf_tpl_small".into(), 8 << 20);
        assert_eq!(
            memory.deferrable_drops(),
            Some((share / 4 / (8 << 20)) as usize)
        );
        // The largest template sets the count: a 200 MB one leaves 6.
        lock(&memory.sizes).insert("pgbf_tpl_large".into(), 200 << 20);
        assert_eq!(
            memory.deferrable_drops(),
            Some((share / 4 / (200 << 20)) as usize)
        );
        assert!(memory.deferrable_drops().unwrap() < 10);
        assert_eq!(Memory::new(None).deferrable_drops(), None, "no budget");
    }
}
