//! A server's worker: everything this process keeps for one server (the
//! crate's stack, or an external server) for as long as it runs, on a
//! background runtime its caller started.
//!
//! It ties together the pieces that each live in their own module: admin
//! connections and drops (`admin.rs`), the prepared-clone pool
//! (`clones/`), the templates built on this incarnation of the server (a
//! replaced stack starts with none) and, on a stack, the process's lease,
//! seen only through [`ServerLease`]. Callers see plain async methods; the
//! work runs on the background runtime, so it outlives each test's runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::provision::admin::{Admin, AdminUrls};
use crate::provision::clones::in_process::InProcess;
use crate::provision::clones::on_stack::OnStack;
use crate::provision::clones::{Claimed, Clones, Store};
use crate::provision::database::Step;
use crate::support::registry::OnceMap;
use crate::support::runtime::Background;
use crate::support::sync::lock;

/// Work to run once, when the worker stops (e.g. removing containers).
pub(crate) type Cleanup = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The process's lease on the server, as the worker sees it: whether the
/// server is known dead, a check, and its end. Its futures run on the
/// worker's background runtime.
pub(crate) trait ServerLease: Send + Sync {
    /// The error saying the server died, once that is known.
    fn dead(&self) -> Option<Error>;
    /// One check: `Err(StackDied)` when the server is gone.
    fn probe(&self) -> LocalBoxFuture<'_, Result<()>>;
    /// The longest [`ServerLease::probe`] may take, retries included.
    fn probe_limit(&self) -> Duration;
    /// Ends the lease.
    fn close(&self) -> LocalBoxFuture<'_, ()>;
}

/// What a worker is made of: plain data about its server.
pub(crate) struct WorkerSetup {
    /// Where its admin work connects.
    pub urls: AdminUrls,
    /// The crate's own stack: prepared clones live in its bookkeeping
    /// tables, and queued drops wait for the stop and go to its janitor.
    /// Never on a user's server.
    pub on_stack: bool,
    /// Run at shutdown.
    pub cleanup: Option<Cleanup>,
    /// The lease on a crate stack: closed at shutdown (or by the kernel,
    /// when the process dies), which lets the stack's watchdog reap it.
    pub lease: Option<Arc<dyn ServerLease>>,
    /// A bookkeeping connection already open (to `urls.books_url`: the
    /// stack's readiness check leaves it), so a process's first claim opens
    /// none.
    pub books_conn: Option<PgConnection>,
    /// The server's memory budget in bytes (a crate stack's); `None`: no
    /// budget (an external server's memory is its owner's).
    pub memory_budget: Option<u64>,
}

/// A handle on a server's worker; cheap to clone.
#[derive(Clone)]
pub(crate) struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    background: Background,
    admin: Arc<Admin>,
    clones: Arc<Clones>,
    lease: Option<Arc<dyn ServerLease>>,
    cleanup: Mutex<Option<Cleanup>>,
    /// Templates found or built on this server by this process.
    templates: OnceMap<()>,
    stopped: std::sync::atomic::AtomicBool,
}

/// How long stopping a worker waits for queued drops and refills.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

impl Worker {
    /// The worker of a server, its work run on `background` (stopped with
    /// the worker).
    pub(crate) fn new(background: Background, setup: WorkerSetup) -> Worker {
        // On a stack, drops wait for the process's exit, which hands them
        // to the janitor.
        let deferred = if setup.on_stack {
            crate::provision::admin::DEFERRED_DROPS
        } else {
            0
        };
        let admin = Arc::new(Admin::new(
            setup.urls,
            deferred,
            setup.books_conn,
            setup.memory_budget,
        ));
        let store: Box<dyn Store> = if setup.on_stack {
            Box::new(OnStack::new(admin.clone()))
        } else {
            Box::<InProcess>::default()
        };
        Worker {
            inner: Arc::new(Inner {
                clones: Arc::new(Clones::new(admin.clone(), store)),
                admin,
                background,
                lease: setup.lease,
                cleanup: Mutex::new(setup.cleanup),
                templates: OnceMap::new(),
                stopped: Default::default(),
            }),
        }
    }

    /// The error saying the stack died, once that is known.
    pub(crate) fn dead(&self) -> Option<Error> {
        self.inner.lease.as_ref().and_then(|l| l.dead())
    }

    /// Checks the lease: `Err(StackDied)` when the stack is gone. Cheap (one
    /// round trip), bounded (a few seconds), and a no-op without a lease.
    pub(crate) async fn probe(&self) -> Result<()> {
        let Some(lease) = self.live_lease()? else {
            return Ok(());
        };
        self.inner
            .background
            .run_within(
                lease.probe_limit() + Duration::from_secs(5),
                "checking the stack's lease",
                "the background thread is busy or stuck; see the container logs",
                move || async move { lease.probe().await },
            )
            .await
    }

    /// The lease, or `StackDied` once the stack is known dead.
    fn live_lease(&self) -> Result<Option<Arc<dyn ServerLease>>> {
        match self.dead() {
            Some(e) => Err(e),
            None => Ok(self.inner.lease.clone()),
        }
    }

    /// Runs `steps` in order (simple protocol) on the admin connections.
    pub(crate) async fn admin(&self, steps: Vec<Step>) -> Result<()> {
        self.live_lease()?;
        let admin = self.inner.admin.clone();
        self.inner
            .background
            .run(move || async move { admin.run_bounded(&steps).await })
            .await?
    }

    /// A prepared clone of `template` for one test, if one is ready (see
    /// [`Clones::take_prepared`]; `base`: clones to keep ready).
    pub(crate) async fn take_prepared(
        &self,
        template: String,
        base: usize,
    ) -> Result<Option<Claimed>> {
        self.live_lease()?;
        let clones = self.inner.clones.clone();
        let asked = Instant::now();
        self.inner
            .background
            .run(
                move || async move { clones.take_prepared(&template, base, asked.elapsed()).await },
            )
            .await?
    }

    /// A clone of the built `template` for a test that found no prepared
    /// one (see [`Clones::clone_for_test`]).
    pub(crate) async fn clone_for_test(&self, template: String, base: usize) -> Result<Claimed> {
        self.live_lease()?;
        let clones = self.inner.clones.clone();
        let asked = Instant::now();
        self.inner
            .background
            .run(move || async move {
                clones
                    .clone_for_test(&template, base, asked.elapsed())
                    .await
            })
            .await?
    }

    /// Drops a test's database (or schema) in the background: the caller
    /// does not wait, and no claim waits behind it. `clone`: it was a
    /// template clone (counted in the demand). Queued drops finish before
    /// the worker stops (at the latest when the process exits), or, on a
    /// crate stack, go to the stack's janitor then.
    pub(crate) fn discard(&self, steps: Vec<Step>, clone: bool) {
        if self.dead().is_some() {
            return;
        }
        let (admin, clones) = (self.inner.admin.clone(), self.inner.clones.clone());
        self.inner.background.spawn(move || async move {
            if clone {
                clones.released();
            }
            if !steps.is_empty() {
                admin.queue_drop(steps);
            }
        });
    }

    /// `template`'s size in bytes (measured once), `None` when it is not
    /// built yet or the server has no memory budget.
    pub(crate) async fn template_bytes(&self, template: String) -> Result<Option<u64>> {
        self.live_lease()?;
        // Measured once per template: later claims need no hop to the
        // worker's thread (it was one round trip per claim).
        let memory = self.inner.admin.memory();
        if memory.budget().is_none() {
            return Ok(None);
        }
        if let Some(bytes) = memory.measured_bytes(&template) {
            return Ok(Some(bytes));
        }
        let admin = self.inner.admin.clone();
        self.inner
            .background
            .run(move || async move { admin.memory().template_bytes(&admin, &template).await })
            .await?
    }

    /// Fails when the server's memory budget cannot hold `template` and a
    /// clone per test running at once (see [`Memory::check_fits`]).
    ///
    /// [`Memory::check_fits`]: crate::provision::memory::Memory::check_fits
    pub(crate) fn check_fits(&self, template: &str, bytes: u64, tests: usize) -> Result<()> {
        self.inner.admin.memory().check_fits(template, bytes, tests)
    }

    /// Whether the server has a memory budget (a crate stack).
    pub(crate) fn has_memory_budget(&self) -> bool {
        self.memory_budget().is_some()
    }

    /// The server's memory budget in bytes, if it has one (a crate stack).
    pub(crate) fn memory_budget(&self) -> Option<u64> {
        self.inner.admin.memory().budget()
    }

    /// The bytes the server's test databases take now, as the budget counts
    /// them (0 without a budget).
    pub(crate) async fn memory_used(&self) -> Result<u64> {
        self.live_lease()?;
        let admin = self.inner.admin.clone();
        self.inner
            .background
            .run(move || async move { admin.memory().used(&admin).await })
            .await?
    }

    /// Templates found or built on this server by this process, by name.
    pub(crate) fn templates(&self) -> &OnceMap<()> {
        &self.inner.templates
    }

    /// Stops the worker, waiting up to `wait` for its clean-up to finish
    /// (false when it did not; it goes on in the background).
    pub(crate) fn shutdown_blocking(&self, wait: Duration) -> bool {
        if self
            .inner
            .stopped
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return true;
        }
        let inner = self.inner.clone();
        let done = self
            .inner
            .background
            .run_blocking(wait, move || async move {
                // No new clone starts; queued drops go to the stack's janitor
                // (a crate stack: the process's exit does not wait for them)
                // or run here; drops and refills in flight finish.
                inner.admin.begin_stop();
                let queued = inner.admin.take_queued_drops();
                for steps in inner.clones.hand_over(queued).await {
                    inner.admin.queue_drop(steps);
                }
                inner.admin.wait_idle(SHUTDOWN_WAIT).await;
                inner.clones.drop_own().await;
                inner.admin.close().await;
                if let Some(lease) = &inner.lease {
                    lease.close().await;
                }
                let cleanup = lock(&inner.cleanup).take();
                if let Some(cleanup) = cleanup {
                    cleanup.await;
                }
                inner.background.stop();
            });
        done.is_some()
    }

    /// Stops this worker (removing its containers) when the process exits.
    pub(crate) fn shutdown_at_exit(&self) {
        let worker = self.clone();
        crate::support::runtime::at_exit(move || {
            worker.shutdown_blocking(Duration::from_secs(20));
        });
    }
}
