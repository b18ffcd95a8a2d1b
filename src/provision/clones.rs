//! Prepared clones of a template: databases cloned ahead of time, so a
//! test's claim is one round trip instead of a `CREATE DATABASE`.
//!
//! Why a pool, and where it lives: cloning takes ~13 ms on an idle server
//! and much longer under a suite's load, so clones are made in the
//! background, as many as the observed demand asks for (claims per second
//! and tests holding one). On the crate's own stacks the pool is a table in
//! the stack's `postgres` database (`pgbf_prepared`), shared by every
//! process of the stack and by later runs, and gone with the stack; on an
//! external server it is kept in this process and its clones are dropped at
//! exit. Templates themselves are built in `template.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::connect::quote::quote_ident;
use crate::connect::sqlx_compat::Executor;
use crate::error::{Error, Result};
use crate::provision::admin::Admin;
use crate::provision::database::{unique_name, Isolation, Step};
use crate::provision::janitor;
use crate::support::sync::lock;

/// Clones made at once per template, in the background.
const REFILL_PARALLEL: usize = 2;
/// Prepared clones kept per template at most, whatever the demand (unless
/// more were asked for): each costs a database's worth of tmpfs (~8 MB).
const MAX_PREPARED: usize = 16;
/// How long making one clone takes, roughly (a `FILE_COPY` clone on the
/// stack's tmpfs, ~13 ms, plus the warm-up): claims expected within that
/// time are the pool's headroom.
const CLONE_SECS: f64 = 0.05;

/// What claiming a clone took, for the test's timing breakdown.
#[derive(Clone, Debug)]
pub(crate) struct Claimed {
    /// The clone's database name.
    pub name: String,
    /// From the request until the background runtime took it up.
    pub queued: Duration,
    /// Taking a prepared clone (one round trip) or cloning on demand.
    pub took: Duration,
    /// Whether it was a prepared clone.
    pub prepared: bool,
}

/// The clone pool of one server.
pub(crate) struct Clones {
    admin: Arc<Admin>,
    ledger: Ledger,
    /// Keeps prepared clones on the stack, for every process and later runs
    /// (else in this process).
    on_stack: bool,
    pool_table: tokio::sync::OnceCell<()>,
    /// Told each time a prepared clone is ready.
    made: tokio::sync::Notify,
}

impl Clones {
    /// The pool of `admin`'s server; `on_stack` only for the crate's own
    /// stacks (never a table on a user's server).
    pub(crate) fn new(admin: Arc<Admin>, on_stack: bool) -> Clones {
        Clones {
            admin,
            ledger: Ledger::default(),
            on_stack,
            pool_table: tokio::sync::OnceCell::new(),
            made: tokio::sync::Notify::new(),
        }
    }

    /// A fresh clone of `template` for one test: a prepared one when ready,
    /// else cloned now (unless `prepared_only`: then `Ok(None)`); keeps
    /// prepared clones ready in the background, as many as the observed
    /// demand asks for (at least `prepared`; 0: none).
    pub(crate) async fn claim(
        self: &Arc<Self>,
        template: &str,
        prepared: usize,
        prepared_only: bool,
        queued: Duration,
    ) -> Result<Option<Claimed>> {
        self.ledger.claimed();
        self.admin.active();
        let started = Instant::now();
        let took = |name: String, prepared: bool| Claimed {
            name,
            queued,
            took: started.elapsed(),
            prepared,
        };
        // How many prepared clones were left, when the claim said.
        let mut left = None;
        let claimed = match self.take_prepared(template).await? {
            Some((name, n)) => {
                left = n;
                Some(took(name, true))
            }
            None if prepared_only => None,
            None => match self.wait_for_refill(template).await? {
                Some(name) => Some(took(name, true)),
                None => Some(took(self.clone_on_demand(template).await?, false)),
            },
        };
        // Without a clone the template may not exist yet: the caller builds
        // it and claims again. A pool that still holds what the demand asks
        // for (the janitor's, between runs) needs no refill task.
        let enough = left.is_some_and(|n| !self.ledger.short(template, n, prepared));
        if claimed.is_some() && prepared > 0 && !enough {
            self.refill(template, prepared);
        }
        Ok(claimed)
    }

    /// A test released its clone (counted in the demand).
    pub(crate) fn released(&self) {
        self.ledger.released();
    }

    /// Drops the clones this process kept for itself (external servers);
    /// a stack's pool stays with the stack.
    pub(crate) async fn drop_own(&self) {
        for name in self.ledger.drain() {
            let _ = self
                .admin
                .run_bounded(&Isolation::Database(name).drop_steps())
                .await;
        }
    }

    /// Gives queued drops to the stack's janitor, which runs them once the
    /// stack is idle, instead of making the process's exit wait for them
    /// (bounded: [`janitor::MAX_GARBAGE`] wait at most). Returns those it
    /// did not take: the caller runs them.
    pub(crate) async fn hand_over(&self, queued: Vec<Vec<Step>>) -> Vec<Vec<Step>> {
        let names: Vec<String> = queued
            .iter()
            .filter_map(|steps| janitor::dropped_database(steps))
            .collect();
        if !self.on_stack || names.is_empty() {
            return queued;
        }
        let sql = janitor::hand_over_sql(&names, janitor::MAX_GARBAGE);
        let taken = self.on_tables(&sql).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "could not hand drops over to the stack's janitor");
            Vec::new()
        });
        queued
            .into_iter()
            .filter(|steps| !janitor::dropped_database(steps).is_some_and(|n| taken.contains(&n)))
            .collect()
    }

    /// `sql` on the stack's bookkeeping tables. The stack's janitor makes
    /// them when it starts; a process that comes first (a new stack) makes
    /// them itself and runs `sql` again: one round trip in the common case.
    async fn on_tables(&self, sql: &str) -> Result<Vec<String>> {
        match self.admin.query(sql).await {
            Err(Error::Sql {
                source: sqlx::Error::Database(e),
                ..
            }) if e.code().as_deref() == Some("42P01") => {
                self.ensure_pool_table().await?;
                self.admin.query(sql).await
            }
            other => other,
        }
    }

    /// The stack's bookkeeping tables (shared with its janitor), made if
    /// missing.
    async fn ensure_pool_table(&self) -> Result<()> {
        self.pool_table
            .get_or_try_init(|| async {
                for table in janitor::TABLES {
                    match self.admin.query(table).await {
                        Ok(_) => {}
                        // Another process (or the janitor) made it at the same instant.
                        Err(Error::Sql {
                            source: sqlx::Error::Database(e),
                            ..
                        }) if matches!(e.code().as_deref(), Some("42P07" | "23505")) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// A prepared clone of `template`, if one is ready, and (on a stack)
    /// how many are left.
    async fn take_prepared(&self, template: &str) -> Result<Option<(String, Option<usize>)>> {
        if !self.on_stack {
            return Ok(self.ledger.take(template).map(|name| (name, None)));
        }
        // Any process of the stack (or its janitor) may have made it; the
        // claim is counted for the janitor in the same statement.
        let rows = self.on_tables(&janitor::claim_sql(template)).await?;
        Ok(rows.first().map(|row| {
            let (name, left) = janitor::claimed_row(row);
            (name, Some(left))
        }))
    }

    /// How many clones of `template` are ready.
    async fn ready_count(&self, template: &str) -> Result<usize> {
        if !self.on_stack {
            return Ok(self.ledger.ready(template));
        }
        let rows = self
            .on_tables(&format!(
                "select count(*) from pgbf_prepared where template = '{template}'"
            ))
            .await?;
        Ok(rows.first().and_then(|n| n.parse().ok()).unwrap_or(0))
    }

    /// A clone this process is making now is nearer than a new one: waits
    /// for the refills in flight (twice at most), then takes one.
    async fn wait_for_refill(&self, template: &str) -> Result<Option<String>> {
        for _ in 0..2 {
            let made = self.made.notified();
            tokio::pin!(made);
            made.as_mut().enable();
            if !self.ledger.making(template) {
                return Ok(None);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), made).await;
            if let Some((name, _)) = self.take_prepared(template).await? {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Clones now, for a test waiting on it: background work steps aside.
    async fn clone_on_demand(&self, template: &str) -> Result<String> {
        let name = clone_name(template);
        self.admin.urgent_clones.fetch_add(1, ORDER);
        let cloned = async {
            let _slot = self.admin.urgent_slot().await;
            self.admin
                .run_bounded(&[Step::server(clone_sql(template, &name))])
                .await
        }
        .await;
        self.admin.urgent_clones.fetch_sub(1, ORDER);
        cloned?;
        if self.on_stack {
            // Counted for the janitor, as a claim of a prepared clone is.
            if let Err(e) = self.on_tables(&janitor::claimed_sql(template)).await {
                tracing::debug!(error = %e, "could not count a claim for the janitor");
            }
        }
        Ok(name)
    }

    /// Starts a refill task for `template` unless enough already run.
    fn refill(self: &Arc<Self>, template: &str, base: usize) {
        if self.admin.stopping() || !self.ledger.start_refill(template) {
            return;
        }
        let clones = self.clone();
        let template = template.to_string();
        self.admin.spawn(async move {
            if let Err(e) = clones.refill_loop(&template, base).await {
                tracing::warn!(template, error = %e, "could not prepare clones; tests clone on demand");
            }
            clones.ledger.end_refill(&template);
        });
    }

    /// Clones until the pool holds what the demand asks for, then ends.
    async fn refill_loop(&self, template: &str, base: usize) -> Result<()> {
        while !self.admin.stopping() {
            let ready = self.ready_count(template).await?;
            if !self.ledger.reserve(template, ready, base) {
                break;
            }
            self.admin.background_clones.fetch_add(1, ORDER);
            let made = self.make_clone(template).await;
            self.admin.background_clones.fetch_sub(1, ORDER);
            self.ledger.unreserve(template);
            made?;
        }
        Ok(())
    }

    /// Makes one prepared clone and warms PgBouncer's server connection to
    /// it (a test then pays no backend start). Unlike the stack's janitor,
    /// which also warms that backend's caches between runs, this runs while
    /// tests do: a `select 1` only, the cache warm-up (~15 ms of the
    /// server's CPU) would cost the run more than it saves a test (~2 ms).
    async fn make_clone(&self, template: &str) -> Result<()> {
        let started = Instant::now();
        let name = clone_name(template);
        {
            let _slot = self.admin.background_slot(false, || false).await;
            self.admin
                .run_bounded(&[Step::server(clone_sql(template, &name))])
                .await?;
        }
        let urls = &self.admin.urls;
        let url = urls.pooled_url.with_database(&name);
        let options =
            crate::connect::options(&url, "pgbouncer-fixtures warm-up").statement_cache_capacity(0);
        let mut warm = crate::connect::open(
            crate::connect::Endpoint::Pooler,
            &url,
            &options,
            urls.connect_timeout,
        )
        .await?;
        warm.execute("select 1").await.map_err(|e| Error::Sql {
            action: "warming a prepared clone".into(),
            source: e,
        })?;
        let _ = warm.close().await;
        if self.on_stack {
            self.on_tables(&format!(
                "insert into pgbf_prepared (name, template) values ('{name}', '{template}')"
            ))
            .await?;
        } else {
            self.ledger.put(template, name);
        }
        self.made.notify_waiters();
        tracing::debug!(
            template,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "prepared a clone"
        );
        Ok(())
    }
}

const ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::SeqCst;

/// The demand the pool is sized to, the refills in flight, and the clones
/// kept in this process (external servers).
#[derive(Default)]
struct Ledger {
    inner: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    /// Prepared clones kept in this process, per template.
    ready: HashMap<String, VecDeque<String>>,
    /// Refill tasks running, per template.
    refilling: HashMap<String, usize>,
    /// Clones being made, per template.
    making: HashMap<String, usize>,
    /// Claims of the last second.
    recent: VecDeque<Instant>,
    /// Tests holding a clone now.
    live: usize,
}

impl Ledger {
    fn with<T>(&self, f: impl FnOnce(&mut LedgerState) -> T) -> T {
        f(&mut lock(&self.inner))
    }

    fn claimed(&self) {
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

    fn released(&self) {
        self.with(|s| s.live = s.live.saturating_sub(1));
    }

    /// Clones to keep ready: at least `base` (0: none), more when tests
    /// claim faster or more at once than that covers.
    fn target(s: &LedgerState, base: usize) -> usize {
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

    fn take(&self, template: &str) -> Option<String> {
        self.with(|s| s.ready.get_mut(template).and_then(VecDeque::pop_front))
    }

    fn put(&self, template: &str, name: String) {
        self.with(|s| {
            s.ready
                .entry(template.to_string())
                .or_default()
                .push_back(name)
        });
    }

    fn ready(&self, template: &str) -> usize {
        self.with(|s| s.ready.get(template).map_or(0, VecDeque::len))
    }

    /// Whether the caller should start a refill task (fewer than
    /// `REFILL_PARALLEL` run).
    fn start_refill(&self, template: &str) -> bool {
        self.with(|s| {
            let n = s.refilling.entry(template.to_string()).or_default();
            let start = *n < REFILL_PARALLEL;
            if start {
                *n += 1;
            }
            start
        })
    }

    fn end_refill(&self, template: &str) {
        self.with(|s| {
            if let Some(n) = s.refilling.get_mut(template) {
                *n = n.saturating_sub(1);
            }
        });
    }

    /// Reserves the making of one clone when `ready` plus those being made
    /// fall short of the target.
    fn reserve(&self, template: &str, ready: usize, base: usize) -> bool {
        self.with(|s| {
            let target = Ledger::target(s, base);
            let making = s.making.entry(template.to_string()).or_default();
            let go = ready + *making < target;
            if go {
                *making += 1;
            }
            go
        })
    }

    /// Whether `ready` clones plus those being made fall short of the target.
    fn short(&self, template: &str, ready: usize, base: usize) -> bool {
        self.with(|s| {
            let making = s.making.get(template).copied().unwrap_or(0);
            ready + making < Ledger::target(s, base)
        })
    }

    /// Whether a clone of `template` is being made in the background.
    fn making(&self, template: &str) -> bool {
        self.with(|s| s.making.get(template).is_some_and(|n| *n > 0))
    }

    fn unreserve(&self, template: &str) {
        self.with(|s| {
            if let Some(n) = s.making.get_mut(template) {
                *n = n.saturating_sub(1);
            }
        });
    }

    fn drain(&self) -> Vec<String> {
        self.with(|s| s.ready.drain().flat_map(|(_, q)| q).collect())
    }
}

fn clone_name(template: &str) -> String {
    // pgbf_tpl_<hash> -> pgbf_c<hash>_<random>: never reused, recognisable.
    let hash = template.trim_start_matches("pgbf_tpl_");
    unique_name(&format!("c{hash}"))
}

fn clone_sql(template: &str, name: &str) -> String {
    // FILE_COPY: on a tmpfs data directory with fsync off it is the fastest
    // strategy (measured on the crate's stack: 13 ms vs 16-33 ms for WAL_LOG).
    format!(
        "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
        quote_ident(name),
        quote_ident(template)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_grows_with_tests_holding_clones_and_stays_bounded() {
        let d = Ledger::default();
        assert_eq!(Ledger::target(&lock(&d.inner), 0), 0, "0 asks for none");
        assert_eq!(Ledger::target(&lock(&d.inner), 2), 2);
        for _ in 0..5 {
            d.claimed();
        }
        assert_eq!(Ledger::target(&lock(&d.inner), 2), 5 + 1);
        for _ in 0..100 {
            d.claimed();
        }
        assert_eq!(Ledger::target(&lock(&d.inner), 2), MAX_PREPARED);
        for _ in 0..105 {
            d.released();
        }
        assert_eq!(lock(&d.inner).live, 0);
        // Two refills at most per template; a reservation counts as made.
        let d = Ledger::default();
        assert!(d.start_refill("t") && d.start_refill("t") && !d.start_refill("t"));
        assert!(d.reserve("t", 0, 1) && !d.reserve("t", 0, 1) && d.making("t"));
        d.unreserve("t");
        assert!(!d.making("t"));
        d.put("t", "a".into());
        assert_eq!(
            (d.ready("t"), d.take("t"), d.take("t")),
            (1, Some("a".into()), None)
        );
    }
}
