//! A dedicated thread with its own tokio runtime.
//!
//! It owns what must outlive any one test's runtime: the stack's containers
//! (private stacks), the process's lease on the stack (the connection whose
//! existence keeps the stack alive, and whose loss says the stack died) and
//! the admin connection that creates and drops test databases. Tests talk
//! to it through a channel, so statics hold only a sender (plain data), never
//! a runtime-bound handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
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

enum Reply {
    Async(oneshot::Sender<Result<()>>),
    Blocking(std_mpsc::SyncSender<Result<()>>),
}

impl Reply {
    fn send(self, result: Result<()>) {
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

enum Command {
    Admin {
        steps: Vec<Step>,
        reply: Reply,
    },
    Claim {
        template: String,
        prepared: usize,
        reply: oneshot::Sender<Result<String>>,
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
        self.send(Command::Admin {
            steps,
            reply: Reply::Async(tx),
        })?;
        rx.await.map_err(|_| gone())?
    }

    /// Like [`Worker::admin`], for places that cannot await (`Drop`).
    pub(crate) fn admin_blocking(&self, steps: Vec<Step>) -> Result<()> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        let what = describe(&steps);
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.send(Command::Admin {
            steps,
            reply: Reply::Blocking(tx),
        })?;
        match rx.recv_timeout(ADMIN_TIMEOUT + Duration::from_secs(5)) {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what,
                after: ADMIN_TIMEOUT,
                hint: "the stack may be overloaded or dead; see the container logs".into(),
            }),
        }
    }

    /// A fresh clone of `template` for one test: a prepared one when ready,
    /// else cloned now; then keeps `prepared` clones ready in the background.
    pub(crate) async fn claim(&self, template: String, prepared: usize) -> Result<String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Claim {
            template,
            prepared,
            reply: tx,
        })?;
        rx.await.map_err(|_| gone())?
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
    let mut conns = Connections::default();
    let clones = ClonePool::default();
    let mut lease = setup.lease.take();
    let mut done = None;
    let mut watch = tokio::time::interval(LEASE_WATCH);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(command) = next_command(rx, &mut watch, &mut lease, &setup, dead).await {
        match command {
            Command::Probe { reply } => {
                let _ = reply.send(probe(&mut lease, &setup, dead).await);
            }
            Command::Containers { reply } => {
                let _ = reply.send(containers(&setup).await);
            }
            Command::Admin { steps, reply } => {
                let what = describe(&steps);
                let result = tokio::time::timeout(ADMIN_TIMEOUT, conns.run(&setup, &steps))
                    .await
                    .unwrap_or_else(|_| {
                        conns = Connections::default();
                        Err(Error::Timeout {
                            what,
                            after: ADMIN_TIMEOUT,
                            hint: "the server is overloaded or gone; see its logs".into(),
                        })
                    });
                reply.send(result);
            }
            Command::Claim {
                template,
                prepared,
                reply,
            } => {
                let ready = clones.take(&template);
                let result = match ready {
                    Some(name) => Ok(name),
                    None => {
                        let name = clone_name(&template);
                        let steps = [Step::server(clone_sql(&template, &name))];
                        match tokio::time::timeout(ADMIN_TIMEOUT, conns.run(&setup, &steps)).await {
                            Ok(r) => r.map(|()| name),
                            Err(_) => Err(Error::Timeout {
                                what: format!("cloning template {template}"),
                                after: ADMIN_TIMEOUT,
                                hint: "the server is overloaded or gone; see its logs".into(),
                            }),
                        }
                    }
                };
                let _ = reply.send(result);
                if prepared > 0 && clones.start_refill(&template) {
                    tokio::spawn(refill(
                        clones.clone(),
                        setup.refill_setup(),
                        template,
                        prepared,
                    ));
                }
            }
            Command::Shutdown { done: tx } => {
                done = Some(tx);
                break;
            }
        }
    }
    // Unclaimed clones are ours: remove them (matters on external servers).
    for name in clones.drain() {
        let _ = conns
            .run(
                &setup,
                &crate::database::Isolation::Database(name).drop_steps(),
            )
            .await;
    }
    for c in [conns.server.take(), conns.console.take(), lease.take()]
        .into_iter()
        .flatten()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
    }
    if let Some(cleanup) = setup.cleanup.take() {
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

/// The worker's two lazily opened admin connections.
#[derive(Default)]
struct Connections {
    server: Option<PgConnection>,
    console: Option<PgConnection>,
}

impl Connections {
    async fn run(&mut self, setup: &WorkerSetup, steps: &[Step]) -> Result<()> {
        for step in steps {
            let (slot, url, kind) = match (step.on, &setup.console_url) {
                (On::Server, _) => (&mut self.server, &setup.admin_url, setup.admin_kind),
                (On::Console, Some(url)) => (&mut self.console, url, "PgBouncer admin console"),
                (On::Console, None) => continue,
            };
            match execute(slot, url, kind, setup.connect_timeout, &step.sql).await {
                Ok(()) => {}
                Err(e) if step.best_effort => {
                    tracing::debug!(sql = %step.sql, error = %e, "best-effort admin step failed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

async fn execute(
    slot: &mut Option<PgConnection>,
    url: &DbUrl,
    kind: &'static str,
    connect_timeout: Duration,
    sql: &str,
) -> Result<()> {
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
        // `Send` enough for the refill task in sqlx 0.8).
        match conn.execute(sql).await {
            Ok(_) => return Ok(()),
            Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Protocol(_))) if attempt == 0 => {
                tracing::debug!(error = %e, "admin connection lost; reconnecting");
                *slot = None;
            }
            Err(e) => {
                return Err(Error::Sql {
                    action: format!("`{sql}`"),
                    source: e,
                });
            }
        }
    }
    Err(gone())
}

/// Prepared clones per template, shared with the refill tasks.
#[derive(Clone, Default)]
struct ClonePool {
    inner: Arc<Mutex<ClonePoolState>>,
}

#[derive(Default)]
struct ClonePoolState {
    ready: HashMap<String, VecDeque<String>>,
    refilling: HashSet<String>,
}

impl ClonePool {
    fn with<T>(&self, f: impl FnOnce(&mut ClonePoolState) -> T) -> T {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    fn take(&self, template: &str) -> Option<String> {
        self.with(|s| s.ready.get_mut(template).and_then(VecDeque::pop_front))
    }

    /// Whether the caller should start a refill task (none is running).
    fn start_refill(&self, template: &str) -> bool {
        self.with(|s| s.refilling.insert(template.to_string()))
    }

    fn drain(&self) -> Vec<String> {
        self.with(|s| s.ready.drain().flat_map(|(_, q)| q).collect())
    }
}

/// What a refill task needs: plain URLs, its own connections.
struct RefillSetup {
    admin_url: DbUrl,
    admin_kind: &'static str,
    pooled_url: DbUrl,
    connect_timeout: Duration,
}

impl WorkerSetup {
    fn refill_setup(&self) -> RefillSetup {
        RefillSetup {
            admin_url: self.admin_url.clone(),
            admin_kind: self.admin_kind,
            pooled_url: self.pooled_url.clone(),
            connect_timeout: self.connect_timeout,
        }
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

/// Clones until `target` are ready, warming PgBouncer's server connection to
/// each (a test then pays no backend start), then ends.
async fn refill(pool: ClonePool, setup: RefillSetup, template: String, target: usize) {
    let result = async {
        let mut admin: Option<PgConnection> = None;
        while pool.with(|s| s.ready.get(&template).map_or(0, VecDeque::len)) < target {
            let name = clone_name(&template);
            execute(
                &mut admin,
                &setup.admin_url,
                setup.admin_kind,
                setup.connect_timeout,
                &clone_sql(&template, &name),
            )
            .await?;
            let url = setup.pooled_url.with_database(&name);
            let options = crate::connect::options(&url, "pgbouncer-fixtures warm-up")
                .statement_cache_capacity(0);
            let mut warm =
                crate::connect::open("pooler", &url, &options, setup.connect_timeout).await?;
            warm.execute("select 1").await.map_err(|e| Error::Sql {
                action: "warming a prepared clone".into(),
                source: e,
            })?;
            let _ = warm.close().await;
            pool.with(|s| s.ready.entry(template.clone()).or_default().push_back(name));
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(template, error = %e, "could not prepare clones; tests clone on demand");
    }
    pool.with(|s| s.refilling.remove(&template));
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
