//! Prepared clones of a template: databases cloned ahead of time, so a
//! test's claim is one round trip instead of a `CREATE DATABASE`.
//!
//! Why a pool, and where it lives: cloning takes ~13 ms on an idle server
//! and much longer under a suite's load, so clones are made in the
//! background, as many as the observed demand asks for (`demand.rs`). Where
//! the clones are kept is a [`Store`]: on the crate's own stacks a table in
//! the stack's `postgres` database (`on_stack.rs`), shared by every process
//! of the stack and by later runs; on an external server this process
//! (`in_process.rs`), whose clones are dropped at exit. Templates
//! themselves are built in `template.rs`.

mod demand;
pub(crate) mod in_process;
pub(crate) mod on_stack;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::Connection;
use tokio::sync::oneshot;

use crate::connect::sqlx_compat::Executor;
use crate::connect::Endpoint;
use crate::contract;
use crate::error::{Error, Result};
use crate::provision::admin::Admin;
use crate::provision::clones::demand::Demand;
use crate::provision::database::{unique_name, Isolation, Step};
use crate::support::sync::lock;

/// A prepared clone taken out of a [`Store`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The clone's database name.
    pub name: String,
    /// How many clones of its template are left, when the store knows.
    pub left: Option<usize>,
}

/// Where prepared clones are kept (and where queued drops can go).
pub(crate) trait Store: Send + Sync {
    /// Takes the oldest prepared clone of `template`.
    fn take<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<Option<Taken>>>;
    /// How many clones of `template` are ready.
    fn ready<'a>(&'a self, template: &'a str) -> BoxFuture<'a, Result<usize>>;
    /// Keeps a new prepared clone of `template`.
    fn put<'a>(&'a self, template: &'a str, name: String) -> BoxFuture<'a, Result<()>>;
    /// A test got a clone made on demand (the pool was empty).
    fn cloned_on_demand<'a>(&'a self, template: &'a str) -> BoxFuture<'a, ()>;
    /// Caps what is prepared between runs per template (`caps`: template,
    /// clones at most), where someone prepares clones between runs.
    fn cap_demand(&self, caps: Vec<(String, usize)>) -> BoxFuture<'_, ()>;
    /// Hands queued drops to whoever drops them after the process; returns
    /// those it did not take (the caller runs them).
    fn hand_over(&self, queued: Vec<Vec<Step>>) -> BoxFuture<'_, Vec<Vec<Step>>>;
    /// The clones this process keeps for itself, taken out (dropped at the
    /// stop); none where they outlive the process.
    fn take_own(&self) -> Vec<String>;
}

/// What claiming a clone took, for the test's timing breakdown.
#[derive(Clone, Debug)]
pub(crate) struct Claimed {
    /// The clone's database name.
    pub name: String,
    /// From the request until the background runtime took it up.
    pub queued: Duration,
    /// Taking a prepared clone (one round trip), or waiting in line for one.
    pub took: Duration,
    /// Whether it was a prepared clone, ready at the claim.
    pub prepared: bool,
    /// Whether its clone was made for a test waiting in line (no prepared
    /// one was on its way for it).
    pub on_demand: bool,
    /// How long its clone waited for room in the memory budget (zero: it
    /// did not wait).
    pub memory_wait: Duration,
}

/// A clone handed to a test waiting in line, or why none could be made.
type Handed = Result<Fresh>;

/// A clone made while tests wait: by a refill, or for a waiting test.
struct Fresh {
    name: String,
    on_demand: bool,
    memory_wait: Duration,
}

/// The tests of one template waiting in line, oldest first.
type Line = VecDeque<oneshot::Sender<Handed>>;

/// The longest a test waits in line: room in the memory budget, then one
/// clone (each bounded on its own), with a margin.
const LINE_WAIT: Duration = Duration::from_secs(120);

/// The clone pool of one server: the demand policy over a [`Store`], and
/// the tests waiting in line for a clone.
pub(crate) struct Clones {
    admin: Arc<Admin>,
    demand: Demand,
    store: Box<dyn Store>,
    /// Per template, the tests waiting for a clone, in arrival order: each
    /// clone made while they wait goes to the first of them.
    waiting: Mutex<HashMap<String, Line>>,
}

impl Clones {
    /// The pool of `admin`'s server, kept in `store`.
    pub(crate) fn new(admin: Arc<Admin>, store: Box<dyn Store>) -> Clones {
        Clones {
            admin,
            demand: Demand::default(),
            store,
            waiting: Mutex::default(),
        }
    }

    /// A prepared clone of `template` for one test, if one is ready (a
    /// clone proves its template is built); counts the test's claim in the
    /// demand, and keeps clones ready in the background, as many as the
    /// demand asks for (at least `base`; 0: none). `None`: the caller makes
    /// sure the template exists, then calls [`Clones::clone_for_test`].
    pub(crate) async fn take_prepared(
        self: &Arc<Self>,
        template: &str,
        base: usize,
        queued: Duration,
    ) -> Result<Option<Claimed>> {
        self.demand.claimed();
        self.admin.active();
        let started = Instant::now();
        let Some(Taken { name, left }) = self.store.take(template).await? else {
            // Without a clone the template may not exist yet: no refill.
            return Ok(None);
        };
        self.after_claim(template, base, left).await;
        Ok(Some(claimed(name, queued, started)))
    }

    /// A clone of the built `template` for the test whose
    /// [`Clones::take_prepared`] found none: the test waits in line, and
    /// gets the next clone made (a refill's, or one made for the tests in
    /// line); a clone is made for it only when fewer are on their way than
    /// tests wait, so it waits about one clone's time at most.
    pub(crate) async fn clone_for_test(
        self: &Arc<Self>,
        template: &str,
        base: usize,
        queued: Duration,
    ) -> Result<Claimed> {
        // Deferred drops wait while tests claim (the clone may take a while).
        self.admin.active();
        let started = Instant::now();
        if let Some(Taken { name, left }) = self.store.take(template).await? {
            self.after_claim(template, base, left).await;
            return Ok(claimed(name, queued, started));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting)
            .entry(template.to_string())
            .or_default()
            .push_back(tx);
        // The pool is short: a refill (its clones go to the line first), and
        // a clone for this test unless enough are on their way.
        self.after_claim(template, base, None).await;
        self.feed_the_line(template);
        // Refills waiting for a slot go ahead of drops now (see make_clone).
        self.admin.budget().nudge();
        let handed = match tokio::time::timeout(LINE_WAIT, rx).await {
            Ok(Ok(handed)) => handed?,
            Ok(Err(_)) => {
                return Err(Error::Timeout {
                    what: format!("a clone of {template}"),
                    after: started.elapsed(),
                    hint: "the worker stopped while the test waited".into(),
                })
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("a clone of {template}"),
                    after: LINE_WAIT,
                    hint: "the server is overloaded or gone; see its logs".into(),
                })
            }
        };
        // Counted for the stack's janitor, as a claim of a prepared clone is.
        let clones = self.clone();
        let counted = template.to_string();
        self.admin
            .spawn(async move { clones.store.cloned_on_demand(&counted).await });
        let mut made = claimed(handed.name, queued, started);
        made.prepared = false;
        made.on_demand = handed.on_demand;
        made.memory_wait = handed.memory_wait;
        Ok(made)
    }

    /// After a claim: a refill, unless the pool still holds what the demand
    /// asks for (`left`, when the store said; the janitor's, between runs).
    async fn after_claim(self: &Arc<Self>, template: &str, base: usize, left: Option<usize>) {
        let cap = self.pool_cap(template).await;
        let enough = left.is_some_and(|n| !self.demand.short(template, n, base, cap));
        if base > 0 && !enough {
            self.refill(template, base);
        }
    }

    /// Prepared clones of `template` the pool may keep: what the memory
    /// budget holds, else [`demand::MAX_PREPARED`].
    async fn pool_cap(&self, template: &str) -> usize {
        let memory = self.admin.memory();
        // Measured once per template: no query after the first.
        let bytes = memory
            .template_bytes(&self.admin, template)
            .await
            .ok()
            .flatten();
        memory.pool_cap(bytes).unwrap_or(demand::MAX_PREPARED)
    }

    /// A test released its clone (counted in the demand).
    pub(crate) fn released(&self) {
        self.demand.released();
    }

    /// Drops the clones this process kept for itself (external servers);
    /// a stack's pool stays with the stack.
    pub(crate) async fn drop_own(&self) {
        for name in self.store.take_own() {
            let _ = self
                .admin
                .run_bounded(&Isolation::Database(name).drop_steps())
                .await;
        }
    }

    /// Gives queued drops to the store's keeper (the stack's janitor) if it
    /// takes them; returns those it did not take: the caller runs them.
    /// First caps the keeper's warm clones between runs to the memory
    /// budget: of the templates this process measured, each may keep its
    /// share of what [`Memory::pool_cap`] allows one template.
    ///
    /// [`Memory::pool_cap`]: crate::provision::memory::Memory::pool_cap
    pub(crate) async fn hand_over(&self, queued: Vec<Vec<Step>>) -> Vec<Vec<Step>> {
        let memory = self.admin.memory();
        let sizes = memory.measured();
        let templates = sizes.len().max(1);
        let caps: Vec<(String, usize)> = sizes
            .into_iter()
            .filter_map(|(template, bytes)| {
                let cap = memory.pool_cap(Some(bytes))?;
                Some((template, cap / templates))
            })
            .collect();
        if !caps.is_empty() {
            self.store.cap_demand(caps).await;
        }
        self.store.hand_over(queued).await
    }

    /// Whether a test waits in line for a clone of `template`.
    fn line_waits(&self, template: &str) -> bool {
        lock(&self.waiting)
            .get(template)
            .is_some_and(|line| line.iter().any(|tx| !tx.is_closed()))
    }

    /// Starts a clone for each test in line that no clone on its way
    /// covers (refills and clones made for the line).
    fn feed_the_line(self: &Arc<Self>, template: &str) {
        let short = {
            let mut waiting = lock(&self.waiting);
            let Some(line) = waiting.get_mut(template) else {
                return;
            };
            // Tests that gave up (their future dropped) wait no more.
            line.retain(|tx| !tx.is_closed());
            let short = line.len().saturating_sub(self.demand.in_flight(template));
            // Counted under the line's lock: two tests joining at once start
            // one clone each, not two each.
            self.demand.start_feeding(template, short);
            short
        };
        for _ in 0..short {
            let clones = self.clone();
            let template = template.to_string();
            self.admin.spawn(async move {
                let made = clones.clone_on_demand(&template).await;
                clones.demand.end_feeding(&template);
                let handed = made.map(|(name, memory_wait)| Fresh {
                    name,
                    on_demand: true,
                    memory_wait,
                });
                clones.hand_to_the_line(&template, handed).await;
            });
        }
    }

    /// Gives a clone just made (or the error that stopped it) to the first
    /// test in line; with nobody in line, a clone joins the pool. A failure
    /// reaches one test only: the line is fed again for the others.
    async fn hand_to_the_line(self: &Arc<Self>, template: &str, mut handed: Handed) {
        loop {
            let first = lock(&self.waiting)
                .get_mut(template)
                .and_then(VecDeque::pop_front);
            let Some(tx) = first else { break };
            match tx.send(handed) {
                Ok(()) => {
                    self.feed_the_line(template);
                    return;
                }
                // That test gave up: the next one.
                Err(back) => handed = back,
            }
        }
        match handed {
            Ok(clone) => {
                if let Err(e) = self.store.put(template, clone.name).await {
                    tracing::warn!(template, error = %e, "could not keep a prepared clone");
                }
            }
            Err(e) => tracing::warn!(template, error = %e, "could not prepare a clone"),
        }
    }

    /// Clones now, for a test waiting in line: background work steps
    /// aside. With a memory budget it first waits for room (drops run first
    /// meanwhile); returns the clone and that wait.
    async fn clone_on_demand(&self, template: &str) -> Result<(String, Duration)> {
        let name = clone_name(template);
        let memory = self.admin.memory();
        let bytes = memory.template_bytes(&self.admin, template).await?;
        let admitted = match bytes {
            Some(bytes) => Some(memory.for_test(&self.admin, template, bytes).await?),
            None => None,
        };
        let _slot = self.admin.budget().urgent().await;
        let started = Instant::now();
        self.admin
            .run_bounded(&[clone_step(template, &name)])
            .await?;
        self.demand.clone_took(template, started.elapsed());
        Ok((name, admitted.map_or(Duration::ZERO, |a| a.waited)))
    }

    /// Starts a refill task for `template` unless enough already run.
    fn refill(self: &Arc<Self>, template: &str, base: usize) {
        if self.admin.stopping() || !self.demand.start_refill(template) {
            return;
        }
        let clones = self.clone();
        let template = template.to_string();
        self.admin.spawn(async move {
            if let Err(e) = clones.refill_loop(&template, base).await {
                tracing::warn!(template, error = %e, "could not prepare clones; tests clone on demand");
            }
            clones.demand.end_refill(&template);
            // A refill that ends without its clone leaves a test in line
            // uncovered: clones are made for it instead.
            clones.feed_the_line(&template);
        });
    }

    /// Clones until the pool holds what the demand asks for, or the memory
    /// budget keeps no room for a test's clone besides, then ends. Each
    /// clone goes to the first test in line, if one waits.
    async fn refill_loop(self: &Arc<Self>, template: &str, base: usize) -> Result<()> {
        let memory = self.admin.memory();
        let bytes = memory.template_bytes(&self.admin, template).await?;
        let cap = memory.pool_cap(bytes).unwrap_or(demand::MAX_PREPARED);
        while !self.admin.stopping() {
            let ready = self.store.ready(template).await?;
            if !self.demand.reserve(template, ready, base, cap) {
                break;
            }
            let room = match bytes {
                Some(bytes) => memory.for_refill(&self.admin, bytes).await,
                None => Ok(None),
            };
            let made = match (bytes, room) {
                (Some(_), Ok(None)) => {
                    // The pool is as large as the budget allows.
                    self.demand.unreserve(template);
                    break;
                }
                (_, Err(e)) => Err(e),
                (_, Ok(_room)) => {
                    let _refilling = self.admin.budget().refilling();
                    self.make_clone(template).await
                }
            };
            self.demand.unreserve(template);
            let name = made?;
            let handed = Ok(Fresh {
                name,
                on_demand: false,
                memory_wait: Duration::ZERO,
            });
            self.hand_to_the_line(template, handed).await;
        }
        Ok(())
    }

    /// Makes one prepared clone and warms PgBouncer's server connection to
    /// it (a test then pays no backend start). Unlike the stack's janitor,
    /// which also warms that backend's caches between runs, this runs while
    /// tests do: a `select 1` only, the cache warm-up (~15 ms of the
    /// server's CPU) would cost the run more than it saves a test (~2 ms).
    /// A test waiting in line makes it as urgent as the test's own clone.
    async fn make_clone(&self, template: &str) -> Result<String> {
        let started = Instant::now();
        let name = clone_name(template);
        {
            let _slot = self
                .admin
                .budget()
                .background(false, || self.line_waits(template))
                .await;
            let copying = Instant::now();
            self.admin
                .run_bounded(&[clone_step(template, &name)])
                .await?;
            self.demand.clone_took(template, copying.elapsed());
        }
        let urls = &self.admin.urls;
        let url = urls.pooled_url.with_database(&name);
        let options =
            crate::connect::options(&url, "pgbouncer-fixtures warm-up").statement_cache_capacity(0);
        let mut warm =
            crate::connect::open(Endpoint::Pooler, &url, &options, urls.connect_timeout).await?;
        warm.execute("select 1").await.map_err(|e| Error::Sql {
            action: "warming a prepared clone".into(),
            source: e,
        })?;
        let _ = warm.close().await;
        tracing::debug!(
            template,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "prepared a clone"
        );
        Ok(name)
    }
}

/// A prepared clone taken at the claim.
fn claimed(name: String, queued: Duration, started: Instant) -> Claimed {
    Claimed {
        name,
        queued,
        took: started.elapsed(),
        prepared: true,
        on_demand: false,
        memory_wait: Duration::ZERO,
    }
}

fn clone_name(template: &str) -> String {
    // pgbf_tpl_<hash> -> pgbf_c<hash>_<random>: never reused, recognisable,
    // and named as the janitor names the clones it prepares.
    unique_name(&contract::clone_stem(template))
}

/// The clone of `template` (`FILE_COPY` at every size: cheaper than
/// `WAL_LOG` at each template size of `benches/scale.rs`).
fn clone_step(template: &str, name: &str) -> Step {
    Step::CloneDatabase {
        name: name.to_string(),
        template: template.to_string(),
    }
}
