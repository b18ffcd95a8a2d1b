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

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::Connection;

use crate::connect::sqlx_compat::Executor;
use crate::connect::Endpoint;
use crate::contract;
use crate::error::{Error, Result};
use crate::provision::admin::Admin;
use crate::provision::clones::demand::Demand;
use crate::provision::database::{unique_name, Isolation, Step};

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
    /// Taking a prepared clone (one round trip) or cloning on demand.
    pub took: Duration,
    /// Whether it was a prepared clone.
    pub prepared: bool,
    /// How long its clone waited for room in the memory budget (zero: it
    /// did not wait).
    pub memory_wait: Duration,
}

/// The clone pool of one server: the demand policy over a [`Store`].
pub(crate) struct Clones {
    admin: Arc<Admin>,
    demand: Demand,
    store: Box<dyn Store>,
    /// Told each time a prepared clone is ready.
    made: tokio::sync::Notify,
}

impl Clones {
    /// The pool of `admin`'s server, kept in `store`.
    pub(crate) fn new(admin: Arc<Admin>, store: Box<dyn Store>) -> Clones {
        Clones {
            admin,
            demand: Demand::default(),
            store,
            made: tokio::sync::Notify::new(),
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
        self.after_claim(template, base, left);
        Ok(Some(claimed(name, queued, started, true)))
    }

    /// A clone of the built `template` for the test whose
    /// [`Clones::take_prepared`] found none: one prepared meanwhile (here
    /// or by the refills in flight), else cloned now.
    pub(crate) async fn clone_for_test(
        self: &Arc<Self>,
        template: &str,
        base: usize,
        queued: Duration,
    ) -> Result<Claimed> {
        // Deferred drops wait while tests claim (the clone may take a while).
        self.admin.active();
        let started = Instant::now();
        let (claimed, left) = match self.store.take(template).await? {
            Some(Taken { name, left }) => (claimed(name, queued, started, true), left),
            None => match self.wait_for_refill(template).await? {
                Some(name) => (claimed(name, queued, started, true), None),
                None => {
                    let (name, waited) = self.clone_on_demand(template).await?;
                    let mut made = claimed(name, queued, started, false);
                    made.memory_wait = waited;
                    (made, None)
                }
            },
        };
        self.after_claim(template, base, left);
        Ok(claimed)
    }

    /// After a claim: a refill, unless the pool still holds what the demand
    /// asks for (`left`, when the store said; the janitor's, between runs).
    fn after_claim(self: &Arc<Self>, template: &str, base: usize, left: Option<usize>) {
        let enough = left.is_some_and(|n| !self.demand.short(template, n, base));
        if base > 0 && !enough {
            self.refill(template, base);
        }
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
    pub(crate) async fn hand_over(&self, queued: Vec<Vec<Step>>) -> Vec<Vec<Step>> {
        self.store.hand_over(queued).await
    }

    /// A clone this process is making now is nearer than a new one: waits
    /// for the refills in flight (twice at most), then takes one.
    async fn wait_for_refill(&self, template: &str) -> Result<Option<String>> {
        for _ in 0..2 {
            let made = self.made.notified();
            tokio::pin!(made);
            made.as_mut().enable();
            if !self.demand.making(template) {
                return Ok(None);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), made).await;
            if let Some(taken) = self.store.take(template).await? {
                return Ok(Some(taken.name));
            }
        }
        Ok(None)
    }

    /// Clones now, for a test waiting on it: background work steps aside.
    /// With a memory budget it first waits for room (drops run first
    /// meanwhile); returns the clone and that wait.
    async fn clone_on_demand(&self, template: &str) -> Result<(String, Duration)> {
        let name = clone_name(template);
        let memory = self.admin.memory();
        let bytes = memory.template_bytes(&self.admin, template).await?;
        let waited = {
            let admitted = match bytes {
                Some(bytes) => Some(memory.for_test(&self.admin, template, bytes).await?),
                None => None,
            };
            let _slot = self.admin.budget().urgent().await;
            self.admin
                .run_bounded(&[clone_step(template, &name)])
                .await?;
            admitted.map_or(Duration::ZERO, |a| a.waited)
        };
        self.store.cloned_on_demand(template).await;
        Ok((name, waited))
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
        });
    }

    /// Clones until the pool holds what the demand asks for, or the memory
    /// budget keeps no room for a test's clone besides, then ends.
    async fn refill_loop(&self, template: &str, base: usize) -> Result<()> {
        let memory = self.admin.memory();
        let bytes = memory.template_bytes(&self.admin, template).await?;
        while !self.admin.stopping() {
            let ready = self.store.ready(template).await?;
            if !self.demand.reserve(template, ready, base) {
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
            let _slot = self.admin.budget().background(false, || false).await;
            self.admin
                .run_bounded(&[clone_step(template, &name)])
                .await?;
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
        self.store.put(template, name).await?;
        self.made.notify_waiters();
        tracing::debug!(
            template,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "prepared a clone"
        );
        Ok(())
    }
}

fn claimed(name: String, queued: Duration, started: Instant, prepared: bool) -> Claimed {
    Claimed {
        name,
        queued,
        took: started.elapsed(),
        prepared,
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
