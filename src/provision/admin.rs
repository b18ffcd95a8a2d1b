//! Admin work on a server: creating and dropping test databases (or
//! schemas) on a small set of admin connections, and PgBouncer's console.
//!
//! Why one place: clones and drops are the server's heaviest statements:
//! they share one [`Budget`] (no test ever waits behind another test's
//! drop). Drops are queued and run in the background; tasks are counted so
//! that stopping waits for them. Runs on the worker's background runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection};

use crate::connect::sqlx_compat::Executor;
use crate::error::{Error, Result};
use crate::provision::budget::Budget;
use crate::provision::database::{On, Step};
use crate::provision::memory::Memory;
use crate::support::sync::lock;
use crate::target::DbUrl;

/// How long one job of admin steps may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Drops running at once: the server has other work (2 cores in CI).
const DROP_PARALLEL: usize = 2;
/// Idle admin connections kept for the next job.
const MAX_IDLE_ADMIN: usize = 6;
/// Idle bookkeeping connections kept (one per test thread claiming at once,
/// at most).
const MAX_IDLE_BOOKS: usize = 4;
/// Drops wait while tests wait for a clone, unless this many are due.
const DROP_BACKLOG: usize = 32;
/// On a crate stack, queued drops wait while the process's tests are busy
/// (a claim or a drop in the last [`DROP_GRACE`]), up to this many; a
/// process that stops hands those still queued to the stack's janitor
/// (which drops them between runs). A run's server then spends no time on
/// drops while tests wait for it (a cold 100-test run of the suite
/// benchmark's binary: 2.2-2.6 -> 1.7-2.0 s here), and a process of one test (nextest) runs no `DROP`. The cost:
/// each is a database on the stack's tmpfs meanwhile (~8 MB for a small
/// template: ~0.5 GB at most).
pub(crate) const DEFERRED_DROPS: usize = 64;
/// How long the process's tests must be quiet before its deferred drops run.
const DROP_GRACE: Duration = Duration::from_millis(250);

/// Where admin work connects.
pub(crate) struct AdminUrls {
    /// Where admin SQL runs (a direct, superuser-ish URL).
    pub admin_url: DbUrl,
    /// What that URL is, for messages: the direct endpoint or the pooler.
    pub admin_kind: crate::connect::Endpoint,
    /// PgBouncer's admin console, on the crate's own stacks (console steps
    /// are skipped otherwise).
    pub console_url: Option<DbUrl>,
    /// Where tests connect (the pooler), to warm prepared clones.
    pub pooled_url: DbUrl,
    /// Where the stack's bookkeeping statements run (claims, hand-overs;
    /// one statement each): PgBouncer on a crate stack in transaction or
    /// statement mode, where a login costs no server backend (a direct one
    /// costs PostgreSQL a new process, ~5 ms of a 2-core CI machine);
    /// `None`: on the admin connections.
    pub books_url: Option<DbUrl>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

/// Admin connections, the heavy-statement budget, the drop queue and a
/// count of running background tasks.
pub(crate) struct Admin {
    pub urls: AdminUrls,
    /// Idle admin connections (to PostgreSQL or the external server).
    idle: Mutex<Vec<PgConnection>>,
    /// Idle bookkeeping connections (to `urls.books_url`).
    books: Mutex<Vec<PgConnection>>,
    /// PgBouncer's admin console: one connection, one statement at a time.
    console: tokio::sync::Mutex<Option<PgConnection>>,
    drops: Mutex<DropQueue>,
    running: AtomicUsize,
    idle_tasks: tokio::sync::Notify,
    stopping: AtomicBool,
    /// Wakes what waits for the stop (deferred drops).
    stopped: tokio::sync::Notify,
    /// The last claim or drop of the process's tests.
    activity: Mutex<Instant>,
    /// Server-heavy statements (clones, drops) and who goes first.
    budget: Budget,
    /// One of the budget's slots for drops, unless room is needed: a
    /// clone for a waiting test never queues behind two drops.
    drop_lane: tokio::sync::Semaphore,
    /// The stack's memory budget: databases counted in bytes.
    memory: Memory,
    /// How many queued drops wait for the stop ([`DEFERRED_DROPS`] on a
    /// crate stack, none elsewhere: the crate leaves nothing on a user's
    /// server, nor runs late).
    deferred: usize,
}

#[derive(Default)]
struct DropQueue {
    queue: VecDeque<Vec<Step>>,
    workers: usize,
}

impl Admin {
    /// `deferred`: how many queued drops wait for the stop; `books`:
    /// a bookkeeping connection already open (the stack's readiness check
    /// opened it through PgBouncer).
    pub(crate) fn new(
        urls: AdminUrls,
        deferred: usize,
        books: Option<PgConnection>,
        memory_budget: Option<u64>,
    ) -> Admin {
        Admin {
            memory: Memory::new(memory_budget),
            urls,
            deferred,
            idle: Mutex::default(),
            books: Mutex::new(books.into_iter().collect()),
            console: tokio::sync::Mutex::default(),
            drops: Mutex::default(),
            running: AtomicUsize::new(0),
            idle_tasks: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
            activity: Mutex::new(Instant::now()),
            budget: Budget::new(),
            drop_lane: tokio::sync::Semaphore::new(1),
        }
    }

    /// Whether the worker is stopping: no new background work starts.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The heavy-statement budget clones and drops share.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The memory budget clones are admitted by.
    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Runs `task` concurrently on the current (background) runtime,
    /// counted until it ends.
    pub(crate) fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let admin = self.clone();
        tokio::spawn(async move {
            task.await;
            if admin.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                admin.idle_tasks.notify_waiters();
            }
        });
    }

    /// Stops new background work (no new clone starts; queued drops run).
    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.notify_waiters();
        // Waiting drops go now.
        self.budget.nudge();
    }

    /// The drops queued and not started, taken out of the queue.
    pub(crate) fn take_queued_drops(&self) -> Vec<Vec<Step>> {
        lock(&self.drops).queue.drain(..).collect()
    }

    /// Waits until no background task runs (at most `limit`).
    pub(crate) async fn wait_idle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle_tasks.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    tasks = self.running.load(Ordering::SeqCst),
                    "the stack's worker stops with drops or refills unfinished"
                );
                return;
            }
        }
    }

    /// Closes every connection it holds.
    pub(crate) async fn close(&self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        let books = std::mem::take(&mut *lock(&self.books));
        let console = self.console.lock().await.take();
        for c in idle.into_iter().chain(books).chain(console) {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
        }
    }

    /// Runs `steps` in order on an admin connection of its own (and the
    /// console), with a time limit.
    pub(crate) async fn run_bounded(&self, steps: &[Step]) -> Result<()> {
        match tokio::time::timeout(ADMIN_TIMEOUT, self.run(steps)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: describe(steps),
                after: ADMIN_TIMEOUT,
                hint: "the server is overloaded or gone; see its logs".into(),
            }),
        }
    }

    async fn run(&self, steps: &[Step]) -> Result<()> {
        let mut server = lock(&self.idle).pop();
        let mut result = Ok(());
        for step in steps {
            let outcome = match (step.on(), &self.urls.console_url) {
                (On::Server, _) => self.execute(&mut server, &step.sql()).await.map(|_| ()),
                (On::Console, Some(url)) => {
                    let mut console = self.console.lock().await;
                    execute(
                        &mut console,
                        url,
                        crate::connect::Endpoint::Console,
                        self.urls.connect_timeout,
                        &step.sql(),
                    )
                    .await
                    .map(|_| ())
                }
                (On::Console, None) => continue,
            };
            match outcome {
                Ok(()) => {}
                Err(e) if step.best_effort() => {
                    tracing::debug!(sql = %step.sql(), error = %e, "best-effort admin step failed");
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.put_back(server);
        result
    }

    fn put_back(&self, conn: Option<PgConnection>) {
        keep(&self.idle, conn, MAX_IDLE_ADMIN);
    }

    async fn execute(&self, slot: &mut Option<PgConnection>, sql: &str) -> Result<Vec<PgRow>> {
        execute(
            slot,
            &self.urls.admin_url,
            self.urls.admin_kind,
            self.urls.connect_timeout,
            sql,
        )
        .await
    }

    /// One bookkeeping statement (on `urls.books_url`, else on an admin
    /// connection), and the rows it returns (typed: read with `try_get`).
    pub(crate) async fn query(&self, sql: &str) -> Result<Vec<PgRow>> {
        let (idle, url, kind, max) = match &self.urls.books_url {
            Some(url) => (
                &self.books,
                url,
                crate::connect::Endpoint::Pooler,
                MAX_IDLE_BOOKS,
            ),
            None => (
                &self.idle,
                &self.urls.admin_url,
                self.urls.admin_kind,
                MAX_IDLE_ADMIN,
            ),
        };
        let mut conn = lock(idle).pop();
        let result = execute(&mut conn, url, kind, self.urls.connect_timeout, sql).await;
        keep(idle, conn, max);
        result
    }

    /// A test claimed or dropped a database: deferred drops wait (see
    /// [`DEFERRED_DROPS`]).
    pub(crate) fn active(&self) {
        *lock(&self.activity) = Instant::now();
    }

    /// Queues a drop: run in the background after clones, at most
    /// [`DROP_PARALLEL`] at once; on a crate stack, deferred while the
    /// process's tests are busy (see [`DEFERRED_DROPS`]).
    pub(crate) fn queue_drop(self: &Arc<Self>, steps: Vec<Step>) {
        self.active();
        let start = {
            let mut drops = lock(&self.drops);
            drops.queue.push_back(steps);
            let start = drops.workers < DROP_PARALLEL;
            if start {
                drops.workers += 1;
            }
            start
        };
        // A longer queue may let a waiting drop through (see drain_drops).
        self.budget.nudge();
        if start {
            let admin = self.clone();
            self.spawn(async move { admin.drain_drops().await });
        }
    }

    /// Until when the oldest of `queued` drops waits; `None`: it runs now.
    fn deferred_until(&self, queued: usize) -> Option<Instant> {
        // A clone waiting for room in the memory budget: drops go now.
        let deferred = self.deferred_limit();
        if deferred == 0 || queued > deferred || self.stopping() || self.memory.pressed() {
            return None;
        }
        let until = *lock(&self.activity) + DROP_GRACE;
        (Instant::now() < until).then_some(until)
    }

    /// How many queued drops may wait: [`DEFERRED_DROPS`], fewer when
    /// that many copies of the largest template would take more than the
    /// memory budget keeps for them (a 200 MB template under a 6 GB
    /// budget: 6 of 64). Beyond it drops run while tests do, so a run does
    /// not reach the budget's edge with memory held by databases nobody
    /// uses.
    fn deferred_limit(&self) -> usize {
        self.memory
            .deferrable_drops()
            .map_or(self.deferred, |n| n.min(self.deferred))
    }

    /// Whether `queued` drops go ahead of refills: [`DROP_BACKLOG`] past
    /// what may wait, or, when the memory budget lowered that, any past it
    /// (their bytes would crowd the budget sooner than refills help).
    fn drops_due(&self, queued: usize) -> bool {
        match self.deferred_limit() {
            limit if limit < self.deferred => queued > limit,
            limit => queued >= limit + DROP_BACKLOG,
        }
    }

    async fn drain_drops(&self) {
        loop {
            let wait = {
                let mut drops = lock(&self.drops);
                if drops.queue.is_empty() {
                    drops.workers -= 1;
                    break;
                }
                self.deferred_until(drops.queue.len())
            };
            if let Some(until) = wait {
                // The stop wakes it: the queue then goes to the janitor.
                let stopped = self.stopped.notified();
                tokio::pin!(stopped);
                stopped.as_mut().enable();
                if !self.stopping() {
                    let _ = tokio::time::timeout_at(until.into(), stopped).await;
                }
                continue;
            }
            let Some(steps) = lock(&self.drops).queue.pop_front() else {
                continue;
            };
            let urgent = self.stopping() || self.memory.pressed();
            let _lane = match urgent {
                true => None,
                false => self.drop_lane.acquire().await.ok(),
            };
            let slot = self
                .budget
                .background(true, || {
                    self.drops_due(lock(&self.drops).queue.len())
                        || self.stopping()
                        || self.memory.pressed()
                })
                .await;
            let started = Instant::now();
            let dropped = self.run_bounded(&steps).await;
            drop(slot);
            self.memory.freed();
            match dropped {
                Ok(()) => tracing::debug!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "test database dropped (background)"
                ),
                Err(e) => tracing::warn!(error = %e, "could not drop a test database"),
            }
        }
    }
}

/// Keeps `conn` among `idle` for the next job, up to `max` of them.
fn keep(idle: &Mutex<Vec<PgConnection>>, conn: Option<PgConnection>, max: usize) {
    if let Some(conn) = conn {
        let mut idle = lock(idle);
        if idle.len() < max {
            idle.push(conn);
        }
    }
}

fn describe(steps: &[Step]) -> String {
    let sql: Vec<String> = steps
        .iter()
        .filter(|s| !s.best_effort())
        .map(Step::sql)
        .collect();
    format!("running `{}` on the admin connection", sql.join("; "))
}

async fn execute(
    slot: &mut Option<PgConnection>,
    url: &DbUrl,
    kind: crate::connect::Endpoint,
    connect_timeout: Duration,
    sql: &str,
) -> Result<Vec<PgRow>> {
    // One retry on a fresh connection: the old one may have been cut.
    let mut retried = false;
    loop {
        let conn = match slot {
            Some(c) => c,
            None => {
                let options = crate::connect::options(url, "pgbouncer-fixtures admin");
                slot.insert(crate::connect::open(kind, url, &options, connect_timeout).await?)
            }
        };
        // `&str` without arguments goes out as a simple Query (raw_sql is not
        // `Send` enough for background tasks in sqlx 0.8).
        match conn.fetch_all(sql).await {
            Ok(rows) => return Ok(rows),
            Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Protocol(_))) if !retried => {
                tracing::debug!(error = %e, "admin connection lost; reconnecting");
                *slot = None;
                retried = true;
            }
            Err(e) => {
                *slot = None;
                return Err(Error::Sql {
                    action: format!("`{sql}`"),
                    source: e,
                });
            }
        }
    }
}
