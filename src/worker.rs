//! A dedicated thread with its own tokio runtime.
//!
//! It owns what must outlive any one test's runtime: the stack's containers
//! (private stacks), the process's lease on the stack (the connection whose
//! existence keeps the stack alive, and whose loss says the stack died) and
//! the admin connection that creates and drops test databases. Tests talk
//! to it through a channel, so statics hold only a sender (plain data), never
//! a runtime-bound handle.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::database::{On, Step};
use crate::error::{Error, Result};
use crate::target::DbUrl;

/// Work to run once, when the worker stops (e.g. removing containers).
pub(crate) type Cleanup = Pin<Box<dyn Future<Output = ()> + 'static>>;

/// What an initialised worker keeps.
pub(crate) struct WorkerSetup {
    /// Where admin SQL runs (a direct, superuser-ish URL).
    pub admin_url: DbUrl,
    /// What that URL is, for messages: `direct endpoint` or `pooler`.
    pub admin_kind: &'static str,
    /// How long connecting to it may take.
    pub connect_timeout: Duration,
    /// PgBouncer's admin console, when the worker belongs to one of the
    /// crate's stacks (console steps are skipped otherwise).
    pub console_url: Option<DbUrl>,
    /// Where tests connect (the pooler), to warm prepared clones.
    pub pooled_url: DbUrl,
    /// Run at shutdown.
    pub cleanup: Option<Cleanup>,
    /// The lease on a crate stack: closed at shutdown (or by the kernel, when
    /// the process dies), which lets the stack's watchdog reap it.
    pub lease: Option<PgConnection>,
    /// Where to look when the lease breaks, to say why in the error.
    pub probe: Option<ProbeTarget>,
}

/// The stack a worker holds a lease on.
pub(crate) struct ProbeTarget {
    pub docker: bollard::Docker,
    pub stack_id: String,
    pub postgres_container: String,
}

enum Command {
    Admin {
        steps: Vec<Step>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Drops a test's database (or schema) in the background; nothing waits.
    Discard {
        steps: Vec<Step>,
        /// A template clone (counted in the demand for prepared clones).
        clone: bool,
    },
    Claim {
        template: String,
        prepared: usize,
        /// Only a prepared clone, never one made on demand (`Ok(None)` then).
        prepared_only: bool,
        asked: Instant,
        reply: oneshot::Sender<Result<Option<Claimed>>>,
    },
    Probe {
        reply: oneshot::Sender<Result<()>>,
    },
    Containers {
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown {
        done: std_mpsc::SyncSender<()>,
    },
}

/// A handle on a worker thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct Worker {
    tx: mpsc::UnboundedSender<Command>,
    /// Set once the stack is known dead: the error every later call returns.
    dead: Arc<OnceLock<Error>>,
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle worker checks its lease: a dead stack is noticed (and
/// warned about) within about this long, not at the process's next call.
const LEASE_WATCH: Duration = Duration::from_secs(1);

impl Worker {
    /// Starts a worker thread, runs `init` on it and returns what `init`
    /// produced. When `init` fails the thread ends and nothing is kept.
    pub(crate) async fn spawn<T, F, Fut>(thread_name: String, init: F) -> Result<(Worker, T)>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, WorkerSetup)>> + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<T>>();
        let dead: Arc<OnceLock<Error>> = Arc::default();
        let thread_dead = dead.clone();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Stack {
                            reason: format!("cannot start a tokio runtime: {e}"),
                        }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let setup = match init().await {
                        Ok((value, setup)) => {
                            if ready_tx.send(Ok(value)).is_err() {
                                // The caller gave up waiting: nobody will use this; clean up now.
                                if let Some(cleanup) = setup.cleanup {
                                    cleanup.await;
                                }
                                return;
                            }
                            setup
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    serve(&mut rx, setup, &thread_dead).await;
                });
            })
            .map_err(|e| Error::Stack {
                reason: format!("cannot spawn the worker thread: {e}"),
            })?;
        let value = ready_rx.await.map_err(|_| Error::Stack {
            reason: "the worker thread ended during start-up".into(),
        })??;
        Ok((Worker { tx, dead }, value))
    }

    /// The error saying the stack died, once that is known.
    pub(crate) fn dead(&self) -> Option<Error> {
        self.dead.get().map(Error::again)
    }

    /// Checks the lease: `Err(StackDied)` when the stack is gone. Cheap (one
    /// round trip), bounded (a few seconds), and a no-op without a lease.
    pub(crate) async fn probe(&self) -> Result<()> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Probe { reply: tx })?;
        match tokio::time::timeout(PROBE_TIMEOUT + Duration::from_secs(5), rx).await {
            Ok(reply) => reply.map_err(|_| gone())?,
            Err(_) => Err(Error::Timeout {
                what: "checking the stack's lease".into(),
                after: PROBE_TIMEOUT,
                hint: "the worker thread is busy or stuck; see the container logs".into(),
            }),
        }
    }

    /// Asks Docker whether both containers of the stack run: `Err(StackDied)`
    /// naming each one that does not. Does not mark the stack dead (a
    /// PgBouncer that is restarting comes back); a no-op without a stack.
    pub(crate) async fn containers(&self) -> Result<()> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Containers { reply: tx })?;
        match tokio::time::timeout(docker_limit(), rx).await {
            Ok(reply) => reply.map_err(|_| gone())?,
            Err(_) => Err(Error::Timeout {
                what: "asking Docker about the stack's containers".into(),
                after: docker_limit(),
                hint: "the worker thread is busy or Docker is stuck; check `docker ps`".into(),
            }),
        }
    }

    /// Runs `steps` in order (simple protocol) on the admin connections.
    pub(crate) async fn admin(&self, steps: Vec<Step>) -> Result<()> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Admin { steps, reply: tx })?;
        rx.await.map_err(|_| gone())?
    }

    /// A fresh clone of `template` for one test: a prepared one when ready,
    /// else cloned now (unless `prepared_only`: then `Ok(None)`); keeps
    /// prepared clones ready in the background, as many as the observed
    /// demand asks for (at least `prepared`; 0: none).
    pub(crate) async fn claim(
        &self,
        template: String,
        prepared: usize,
        prepared_only: bool,
    ) -> Result<Option<Claimed>> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Claim {
            template,
            prepared,
            prepared_only,
            asked: Instant::now(),
            reply: tx,
        })?;
        rx.await.map_err(|_| gone())?
    }

    /// Drops a test's database (or schema) in the background: the caller
    /// does not wait, and no claim waits behind it. Queued drops finish
    /// before the worker stops (at the latest when the process exits), or,
    /// on a crate stack, go to the stack's janitor then.
    pub(crate) fn discard(&self, steps: Vec<Step>, clone: bool) {
        if self.dead().is_none() {
            let _ = self.send(Command::Discard { steps, clone });
        }
    }

    /// Stops the worker, waiting up to `wait` for its clean-up to finish.
    pub(crate) fn shutdown_blocking(&self, wait: Duration) -> bool {
        let (done_tx, done_rx) = std_mpsc::sync_channel(1);
        if self.tx.send(Command::Shutdown { done: done_tx }).is_err() {
            return true; // already stopped
        }
        done_rx.recv_timeout(wait).is_ok()
    }

    fn send(&self, command: Command) -> Result<()> {
        self.tx.send(command).map_err(|_| gone())
    }
}

fn describe(steps: &[Step]) -> String {
    let sql: Vec<&str> = steps
        .iter()
        .filter(|s| !s.best_effort)
        .map(|s| s.sql.as_str())
        .collect();
    format!("running `{}` on the admin connection", sql.join("; "))
}

fn docker_limit() -> Duration {
    // Two inspections, each bounded by the Docker call limit.
    crate::docker::CALL_TIMEOUT * 2 + Duration::from_secs(5)
}

fn gone() -> Error {
    Error::Stack {
        reason: "the stack's worker has stopped (the stack was shut down)".into(),
    }
}

async fn serve(
    rx: &mut mpsc::UnboundedReceiver<Command>,
    mut setup: WorkerSetup,
    dead: &OnceLock<Error>,
) {
    let mut lease = setup.lease.take();
    let cleanup = setup.cleanup.take();
    let jobs = Arc::new(Jobs::new(&setup));
    let mut done = None;
    let mut watch = tokio::time::interval(LEASE_WATCH);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Probes run here, on the lease; everything else runs as concurrent
    // tasks, so that a claim never waits behind a drop or a refill.
    while let Some(command) = next_command(rx, &mut watch, &mut lease, &setup, dead).await {
        match command {
            Command::Probe { reply } => {
                let _ = reply.send(probe(&mut lease, &setup, dead).await);
            }
            Command::Containers { reply } => {
                let _ = reply.send(containers(&setup).await);
            }
            Command::Admin { steps, reply } => {
                let task = jobs.clone();
                jobs.spawn(async move {
                    let _ = reply.send(task.run_bounded(&steps).await);
                });
            }
            Command::Discard { steps, clone } => {
                if clone {
                    jobs.pool.dropped();
                }
                if !steps.is_empty() {
                    jobs.queue_drop(steps);
                }
            }
            Command::Claim {
                template,
                prepared,
                prepared_only,
                asked,
                reply,
            } => {
                jobs.pool.claimed();
                let task = jobs.clone();
                jobs.spawn(async move {
                    let result = task
                        .claim(&template, prepared, prepared_only, asked.elapsed())
                        .await;
                    let _ = reply.send(result);
                });
            }
            Command::Shutdown { done: tx } => {
                done = Some(tx);
                break;
            }
        }
    }
    // Queued drops go to the stack's janitor (a crate stack) or finish
    // first, as do drops and refills in flight (no new clone starts).
    jobs.stopping.store(true, Ordering::SeqCst);
    if jobs.shared_pool {
        jobs.hand_over_drops().await;
    }
    jobs.wait_idle(SHUTDOWN_WAIT).await;
    // Unclaimed clones of an in-process pool are ours: remove them (matters
    // on external servers). A stack's pool lives on the stack, for later
    // processes and runs, and goes with it.
    for name in jobs.pool.drain() {
        let _ = jobs
            .run(&crate::database::Isolation::Database(name).drop_steps())
            .await;
    }
    let idle = std::mem::take(&mut *lock(&jobs.admin));
    let console = jobs.console.lock().await.take();
    for c in idle.into_iter().chain(console).chain(lease.take()) {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
    }
    if let Some(cleanup) = cleanup {
        cleanup.await;
    }
    if let Some(tx) = done {
        let _ = tx.send(());
    }
}

/// The next command; while none comes, checks the lease every
/// [`LEASE_WATCH`], so a stack that dies is noticed at once: the warning is
/// logged then, and every later call fails fast with `StackDied`.
async fn next_command(
    rx: &mut mpsc::UnboundedReceiver<Command>,
    watch: &mut tokio::time::Interval,
    lease: &mut Option<PgConnection>,
    setup: &WorkerSetup,
    dead: &OnceLock<Error>,
) -> Option<Command> {
    loop {
        tokio::select! {
            command = rx.recv() => return command,
            _ = watch.tick(), if lease.is_some() && setup.probe.is_some() && dead.get().is_none() => {
                let _ = probe(lease, setup, dead).await;
            }
        }
    }
}

/// Both containers of the stack run, or `StackDied` saying which does not.
async fn containers(setup: &WorkerSetup) -> Result<()> {
    let Some(target) = setup.probe.as_ref() else {
        return Ok(());
    };
    match crate::containers::pair_problem(&target.docker, &target.stack_id).await? {
        None => Ok(()),
        Some(reason) => Err(Error::StackDied {
            stack: target.stack_id.clone(),
            reason,
        }),
    }
}

async fn probe(
    lease: &mut Option<PgConnection>,
    setup: &WorkerSetup,
    dead: &OnceLock<Error>,
) -> Result<()> {
    if let Some(e) = dead.get() {
        return Err(e.again());
    }
    let (Some(conn), Some(target)) = (lease.as_mut(), setup.probe.as_ref()) else {
        return Ok(());
    };
    let failure =
        match tokio::time::timeout(PROBE_TIMEOUT, sqlx::raw_sql("select 1").execute(conn)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => format!("its lease connection failed ({e})"),
            Err(_) => format!("its lease connection did not answer within {PROBE_TIMEOUT:?}"),
        };
    *lease = None;
    let state = crate::containers::describe(&target.docker, &target.postgres_container).await;
    let error = Error::StackDied {
        stack: target.stack_id.clone(),
        reason: format!("{state}; {failure}"),
    };
    let _ = dead.set(error.again());
    tracing::warn!(
        stack = %target.stack_id,
        error = %error,
        "the stack died: every later call of this process fails with StackDied"
    );
    Err(error)
}

/// How long stopping a worker waits for queued drops and refills.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);
/// Drops running at once: the server has other work (2 cores in CI).
const DROP_PARALLEL: usize = 2;
/// Clones made at once per template, in the background.
const REFILL_PARALLEL: usize = 2;
/// Prepared clones kept per template at most, whatever the demand (unless
/// more were asked for): each costs a database's worth of tmpfs (~8 MB).
const MAX_PREPARED: usize = 16;
/// How long making one clone takes, roughly (FACTS.md section 4 plus the
/// warm-up): claims expected within that time are the pool's headroom.
const CLONE_SECS: f64 = 0.05;
/// Idle admin connections kept for the next job.
const MAX_IDLE_ADMIN: usize = 6;
/// Clones and drops running at once on the server, whoever asks: beyond
/// two, a 2-core server only makes each slower (measured with pgbench:
/// clone+drop pairs went from 28/s at 1 to 43/s at 2 and 44/s at 4, with
/// twice the latency).
const HEAVY_PARALLEL: usize = 2;
/// Drops wait while tests wait for a clone, unless this many are queued.
const DROP_BACKLOG: usize = 32;

/// What claiming a clone took, for the test's timing breakdown.
#[derive(Clone, Debug)]
pub(crate) struct Claimed {
    /// The clone's database name.
    pub name: String,
    /// From the request until the worker took it up.
    pub queued: Duration,
    /// Taking a prepared clone (one round trip) or cloning on demand.
    pub took: Duration,
    /// Whether it was a prepared clone.
    pub prepared: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the worker's jobs connect.
struct Urls {
    admin_url: DbUrl,
    admin_kind: &'static str,
    console_url: Option<DbUrl>,
    pooled_url: DbUrl,
    connect_timeout: Duration,
}

/// What the worker's concurrent jobs share: connections, the prepared
/// clones, the queue of drops, and a count of running tasks.
struct Jobs {
    urls: Urls,
    /// Idle admin connections (to PostgreSQL or the external server).
    admin: Mutex<Vec<PgConnection>>,
    /// PgBouncer's admin console: one connection, one statement at a time.
    console: tokio::sync::Mutex<Option<PgConnection>>,
    pool: ClonePool,
    /// Keeps prepared clones in the stack's `postgres` database, for every
    /// process and later runs of the stack (else in this process).
    shared_pool: bool,
    pool_table: tokio::sync::OnceCell<()>,
    drops: Mutex<DropQueue>,
    running: AtomicUsize,
    idle: tokio::sync::Notify,
    stopping: AtomicBool,
    /// Server-heavy statements (clones, drops) running at once.
    heavy: tokio::sync::Semaphore,
    /// Claims cloning on demand now: the background work steps aside.
    claims_cloning: AtomicUsize,
    /// Told each time a prepared clone is ready.
    clone_made: tokio::sync::Notify,
}

#[derive(Default)]
struct DropQueue {
    queue: VecDeque<Vec<Step>>,
    workers: usize,
}

impl Jobs {
    fn new(setup: &WorkerSetup) -> Jobs {
        Jobs {
            urls: Urls {
                admin_url: setup.admin_url.clone(),
                admin_kind: setup.admin_kind,
                console_url: setup.console_url.clone(),
                pooled_url: setup.pooled_url.clone(),
                connect_timeout: setup.connect_timeout,
            },
            admin: Mutex::default(),
            console: tokio::sync::Mutex::default(),
            pool: ClonePool::default(),
            // The crate's own stacks only: never a table on a user's server.
            shared_pool: setup.console_url.is_some(),
            pool_table: tokio::sync::OnceCell::new(),
            drops: Mutex::default(),
            running: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            heavy: tokio::sync::Semaphore::new(HEAVY_PARALLEL),
            claims_cloning: AtomicUsize::new(0),
            clone_made: tokio::sync::Notify::new(),
        }
    }

    /// A slot for a clone or drop in the background, once no test waits for
    /// an on-demand clone (claims first) and, `after_refills`, no prepared
    /// clone is being made (refills next, drops last), unless `urgent`.
    async fn background_slot(
        &self,
        after_refills: bool,
        urgent: impl Fn() -> bool,
    ) -> tokio::sync::SemaphorePermit<'_> {
        while (self.claims_cloning.load(Ordering::SeqCst) > 0
            || (after_refills && self.pool.making_any()))
            && !urgent()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.heavy
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Runs `task` concurrently, counted until it ends.
    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let jobs = self.clone();
        tokio::spawn(async move {
            task.await;
            if jobs.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                jobs.idle.notify_waiters();
            }
        });
    }

    /// Waits until no task runs (at most `limit`).
    async fn wait_idle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
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

    /// Runs `steps` in order on an admin connection of its own (and the
    /// console), with a time limit.
    async fn run_bounded(&self, steps: &[Step]) -> Result<()> {
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
        let mut server = lock(&self.admin).pop();
        let mut result = Ok(());
        for step in steps {
            let outcome = match (step.on, &self.urls.console_url) {
                (On::Server, _) => self.execute(&mut server, &step.sql).await.map(|_| ()),
                (On::Console, Some(url)) => {
                    let mut console = self.console.lock().await;
                    execute(
                        &mut console,
                        url,
                        "PgBouncer admin console",
                        self.urls.connect_timeout,
                        &step.sql,
                    )
                    .await
                    .map(|_| ())
                }
                (On::Console, None) => continue,
            };
            match outcome {
                Ok(()) => {}
                Err(e) if step.best_effort => {
                    tracing::debug!(sql = %step.sql, error = %e, "best-effort admin step failed");
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Some(conn) = server {
            let mut idle = lock(&self.admin);
            if idle.len() < MAX_IDLE_ADMIN {
                idle.push(conn);
            }
        }
        result
    }

    /// One statement on an admin connection (`slot`, opened if empty);
    /// the first column of the rows it returns, as text.
    async fn execute(&self, slot: &mut Option<PgConnection>, sql: &str) -> Result<Vec<String>> {
        execute(
            slot,
            &self.urls.admin_url,
            self.urls.admin_kind,
            self.urls.connect_timeout,
            sql,
        )
        .await
    }

    /// One statement on a pooled admin connection.
    async fn query(&self, sql: &str) -> Result<Vec<String>> {
        let mut server = lock(&self.admin).pop();
        let result = self.execute(&mut server, sql).await;
        if let Some(conn) = server {
            let mut idle = lock(&self.admin);
            if idle.len() < MAX_IDLE_ADMIN {
                idle.push(conn);
            }
        }
        result
    }

    fn queue_drop(self: &Arc<Self>, steps: Vec<Step>) {
        let start = {
            let mut drops = lock(&self.drops);
            drops.queue.push_back(steps);
            let start = drops.workers < DROP_PARALLEL;
            if start {
                drops.workers += 1;
            }
            start
        };
        if start {
            let jobs = self.clone();
            self.spawn(async move {
                loop {
                    let next = {
                        let mut drops = lock(&jobs.drops);
                        let next = drops.queue.pop_front();
                        if next.is_none() {
                            drops.workers -= 1;
                        }
                        next
                    };
                    let Some(steps) = next else { break };
                    let slot = jobs
                        .background_slot(true, || {
                            lock(&jobs.drops).queue.len() >= DROP_BACKLOG
                                || jobs.stopping.load(Ordering::SeqCst)
                        })
                        .await;
                    let started = Instant::now();
                    let dropped = jobs.run_bounded(&steps).await;
                    drop(slot);
                    match dropped {
                        Ok(()) => tracing::debug!(
                            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                            "test database dropped (background)"
                        ),
                        Err(e) => tracing::warn!(error = %e, "could not drop a test database"),
                    }
                }
            });
        }
    }

    /// Gives the queued drops to the stack's janitor, which runs them once
    /// the stack is idle, instead of making the process's exit wait for
    /// them (bounded: beyond the janitor's backlog they run here).
    async fn hand_over_drops(self: &Arc<Self>) {
        let queued: Vec<Vec<Step>> = lock(&self.drops).queue.drain(..).collect();
        let names: Vec<String> = queued
            .iter()
            .filter_map(|steps| crate::janitor::dropped_database(steps))
            .collect();
        let taken = if names.is_empty() {
            Vec::new()
        } else {
            let sql = crate::janitor::hand_over_sql(&names, crate::janitor::MAX_GARBAGE);
            match self.ensure_pool_table().await {
                Ok(()) => self.query(&sql).await,
                Err(e) => Err(e),
            }
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "could not hand drops over to the stack's janitor");
                Vec::new()
            })
        };
        for steps in queued {
            if !crate::janitor::dropped_database(&steps).is_some_and(|n| taken.contains(&n)) {
                self.queue_drop(steps);
            }
        }
    }

    /// The stack's table of prepared clones, made on first use.
    async fn ensure_pool_table(&self) -> Result<()> {
        self.pool_table
            .get_or_try_init(|| async {
                for table in crate::janitor::TABLES {
                    match self.query(table).await {
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

    /// A prepared clone of `template`, if one is ready.
    async fn take_prepared(&self, template: &str) -> Result<Option<String>> {
        if !self.shared_pool {
            return Ok(self.pool.take(template));
        }
        self.ensure_pool_table().await?;
        // Any process of the stack (or its janitor) may have made it; the
        // claim is counted for the janitor in the same statement.
        let rows = self.query(&crate::janitor::claim_sql(template)).await?;
        Ok(rows.into_iter().next())
    }

    /// How many clones of `template` are ready.
    async fn ready_count(&self, template: &str) -> Result<usize> {
        if !self.shared_pool {
            return Ok(self.pool.ready(template));
        }
        self.ensure_pool_table().await?;
        let rows = self
            .query(&format!(
                "select count(*) from pgbf_prepared where template = '{template}'"
            ))
            .await?;
        Ok(rows.first().and_then(|n| n.parse().ok()).unwrap_or(0))
    }

    async fn claim(
        self: &Arc<Self>,
        template: &str,
        prepared: usize,
        prepared_only: bool,
        queued: Duration,
    ) -> Result<Option<Claimed>> {
        let started = Instant::now();
        let claimed = match self.take_prepared(template).await? {
            Some(name) => Some(Claimed {
                name,
                queued,
                took: started.elapsed(),
                prepared: true,
            }),
            None if prepared_only => None,
            None => match self.wait_for_refill(template).await? {
                Some(name) => Some(Claimed {
                    name,
                    queued,
                    took: started.elapsed(),
                    prepared: true,
                }),
                None => self.clone_on_demand(template, queued, started).await?,
            },
        };
        // Without a clone the template may not exist yet: the caller builds
        // it and claims again.
        if claimed.is_some() && prepared > 0 {
            self.refill(template, prepared);
        }
        Ok(claimed)
    }

    /// A clone this process is making now is nearer than a new one: waits
    /// for the refills in flight (twice at most), then takes one.
    async fn wait_for_refill(&self, template: &str) -> Result<Option<String>> {
        for _ in 0..2 {
            let made = self.clone_made.notified();
            tokio::pin!(made);
            made.as_mut().enable();
            if !self.pool.making(template) {
                return Ok(None);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), made).await;
            if let Some(name) = self.take_prepared(template).await? {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    async fn clone_on_demand(
        &self,
        template: &str,
        queued: Duration,
        started: Instant,
    ) -> Result<Option<Claimed>> {
        let name = clone_name(template);
        self.claims_cloning.fetch_add(1, Ordering::SeqCst);
        let cloned = async {
            let _slot = self.heavy.acquire().await.expect("never closed");
            self.run_bounded(&[Step::server(clone_sql(template, &name))])
                .await
        }
        .await;
        self.claims_cloning.fetch_sub(1, Ordering::SeqCst);
        cloned?;
        if self.shared_pool {
            // Counted for the janitor, as a claim of a prepared clone is.
            if let Err(e) = self.query(&crate::janitor::claimed_sql(template)).await {
                tracing::debug!(error = %e, "could not count a claim for the janitor");
            }
        }
        Ok(Some(Claimed {
            name,
            queued,
            took: started.elapsed(),
            prepared: false,
        }))
    }

    /// Starts a refill task for `template` unless enough already run.
    fn refill(self: &Arc<Self>, template: &str, base: usize) {
        if self.stopping.load(Ordering::SeqCst) || !self.pool.start_refill(template) {
            return;
        }
        let jobs = self.clone();
        let template = template.to_string();
        self.spawn(async move {
            if let Err(e) = jobs.refill_loop(&template, base).await {
                tracing::warn!(template, error = %e, "could not prepare clones; tests clone on demand");
            }
            jobs.pool.end_refill(&template);
        });
    }

    /// Clones until the pool holds what the demand asks for, warming
    /// PgBouncer's server connection to each (a test then pays no backend
    /// start), then ends.
    async fn refill_loop(&self, template: &str, base: usize) -> Result<()> {
        while !self.stopping.load(Ordering::SeqCst) {
            let ready = self.ready_count(template).await?;
            if !self.pool.reserve(template, ready, base) {
                break;
            }
            let made = self.make_clone(template).await;
            self.pool.unreserve(template);
            made?;
        }
        Ok(())
    }

    async fn make_clone(&self, template: &str) -> Result<()> {
        let started = Instant::now();
        let name = clone_name(template);
        {
            let _slot = self.background_slot(false, || false).await;
            self.run_bounded(&[Step::server(clone_sql(template, &name))])
                .await?;
        }
        let url = self.urls.pooled_url.with_database(&name);
        let options =
            crate::connect::options(&url, "pgbouncer-fixtures warm-up").statement_cache_capacity(0);
        let mut warm =
            crate::connect::open("pooler", &url, &options, self.urls.connect_timeout).await?;
        warm.execute("select 1").await.map_err(|e| Error::Sql {
            action: "warming a prepared clone".into(),
            source: e,
        })?;
        let _ = warm.close().await;
        if self.shared_pool {
            self.query(&format!(
                "insert into pgbf_prepared (name, template) values ('{name}', '{template}')"
            ))
            .await?;
        } else {
            self.pool.put(template, name);
        }
        self.clone_made.notify_waiters();
        tracing::debug!(
            template,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "prepared a clone"
        );
        Ok(())
    }
}

async fn execute(
    slot: &mut Option<PgConnection>,
    url: &DbUrl,
    kind: &'static str,
    connect_timeout: Duration,
    sql: &str,
) -> Result<Vec<String>> {
    // One retry on a fresh connection: the old one may have been cut.
    for attempt in 0..2 {
        let conn = match slot {
            Some(c) => c,
            None => {
                let options = crate::connect::options(url, "pgbouncer-fixtures admin");
                slot.insert(crate::connect::open(kind, url, &options, connect_timeout).await?)
            }
        };
        // `&str` without arguments goes out as a simple Query (raw_sql is not
        // `Send` enough for the worker's tasks in sqlx 0.8).
        match conn.fetch_all(sql).await {
            Ok(rows) => {
                return Ok(rows
                    .iter()
                    .filter_map(|r| {
                        r.try_get::<String, _>(0)
                            .or_else(|_| r.try_get::<i64, _>(0).map(|n| n.to_string()))
                            .ok()
                    })
                    .collect());
            }
            Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Protocol(_))) if attempt == 0 => {
                tracing::debug!(error = %e, "admin connection lost; reconnecting");
                *slot = None;
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
    Err(gone())
}

/// Prepared clones kept in this process (external servers), and the
/// demand every pool is sized to.
#[derive(Default)]
struct ClonePool {
    inner: Mutex<ClonePoolState>,
}

#[derive(Default)]
struct ClonePoolState {
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

impl ClonePool {
    fn with<T>(&self, f: impl FnOnce(&mut ClonePoolState) -> T) -> T {
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

    fn dropped(&self) {
        self.with(|s| s.live = s.live.saturating_sub(1));
    }

    /// Clones to keep ready: at least `base` (0: none), more when tests
    /// claim faster or more at once than that covers.
    fn target(s: &ClonePoolState, base: usize) -> usize {
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
            let target = ClonePool::target(s, base);
            let making = s.making.entry(template.to_string()).or_default();
            let go = ready + *making < target;
            if go {
                *making += 1;
            }
            go
        })
    }

    /// Whether a clone of `template` is being made in the background.
    fn making(&self, template: &str) -> bool {
        self.with(|s| s.making.get(template).is_some_and(|n| *n > 0))
    }

    /// Whether any clone is being made in the background.
    fn making_any(&self) -> bool {
        self.with(|s| s.making.values().any(|n| *n > 0))
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
    // pgbf_tpl_<hash> -> pgbf_<hash>_<random>: never reused, recognisable.
    let hash = template.trim_start_matches("pgbf_tpl_");
    crate::database::unique_name(&format!("c{hash}"))
}

fn clone_sql(template: &str, name: &str) -> String {
    use crate::database::quote_ident;
    // FILE_COPY: on a tmpfs data directory with fsync off it is the fastest
    // strategy (FACTS.md section 4: 13 ms vs 16-33 ms for WAL_LOG).
    format!(
        "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
        quote_ident(name),
        quote_ident(template)
    )
}

/// Workers to stop when the process exits normally.
static AT_EXIT: Mutex<Vec<Worker>> = Mutex::new(Vec::new());

/// Stops `worker` (removing its containers) when the process exits.
pub(crate) fn shutdown_at_exit(worker: &Worker) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn` with libc's atexit.
        unsafe {
            libc::atexit(run_at_exit);
        }
    });
    if let Ok(mut workers) = AT_EXIT.lock() {
        workers.push(worker.clone());
    }
}

extern "C" fn run_at_exit() {
    let workers = match AT_EXIT.lock() {
        Ok(mut w) => std::mem::take(&mut *w),
        Err(_) => return,
    };
    for worker in workers {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker.shutdown_blocking(Duration::from_secs(20))
        }));
    }
}
