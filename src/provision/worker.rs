//! A server's worker: everything this process keeps for one server (the
//! crate's stack, or an external server) for as long as it runs, on a
//! background runtime of its own.
//!
//! It ties together the pieces that each live in their own module: the
//! background runtime (`runtime.rs`), the lease on a stack (`lease.rs`),
//! admin connections and drops (`admin.rs`), the prepared-clone pool
//! (`clones.rs`) and the templates built on this incarnation of the server
//! (a replaced stack starts with none). Callers see plain async methods; the
//! work runs on the background runtime, so it outlives each test's runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::provision::admin::{Admin, AdminUrls};
use crate::provision::clones::{Claimed, Clones};
use crate::provision::database::Step;
use crate::stack::lease::{Lease, ProbeTarget, PROBE_TIMEOUT, RENEW_TIMEOUT};
use crate::support::registry::OnceMap;
use crate::support::runtime::Background;
use crate::support::sync::lock;

/// Work to run once, when the worker stops (e.g. removing containers).
pub(crate) type Cleanup = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a worker is made of, as its start-up produced it.
pub(crate) struct WorkerSetup {
    /// Where its admin work connects.
    pub urls: AdminUrls,
    /// Run at shutdown.
    pub cleanup: Option<Cleanup>,
    /// The lease on a crate stack and where to look when it breaks: closed
    /// at shutdown (or by the kernel, when the process dies), which lets
    /// the stack's watchdog reap it.
    pub lease: Option<(PgConnection, ProbeTarget)>,
    /// A bookkeeping connection already open (to `urls.books_url`: the
    /// stack's readiness check leaves it), so a process's first claim opens
    /// none.
    pub books_conn: Option<PgConnection>,
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
    lease: Option<Arc<Lease>>,
    cleanup: Mutex<Option<Cleanup>>,
    /// Templates found or built on this server by this process.
    templates: OnceMap<()>,
    stopped: std::sync::atomic::AtomicBool,
}

/// How long stopping a worker waits for queued drops and refills.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

impl Worker {
    /// Starts a background runtime named `thread_name`, runs `init` there and
    /// returns what `init` produced. When `init` fails the runtime ends and
    /// nothing is kept; when the caller stops waiting, the clean-up runs.
    pub(crate) async fn start<T, F, Fut>(thread_name: String, init: F) -> Result<(Worker, T)>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, WorkerSetup)>> + 'static,
    {
        let background = Background::start(thread_name)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = background.spawn(move || async move {
            let outcome = init().await;
            if let Err(Ok((_, setup))) = tx.send(outcome) {
                // Nobody will use it: clean up now.
                if let Some(cleanup) = setup.cleanup {
                    cleanup.await;
                }
            }
        });
        let made = match rx.await {
            Ok(made) if spawned => made,
            _ => Err(Error::Stack {
                reason: "the background thread ended during start-up".into(),
            }),
        };
        let (value, setup) = match made {
            Ok(made) => made,
            Err(e) => {
                background.stop();
                return Err(e);
            }
        };
        // The crate's own stacks have a console; never a table on a user's server.
        let on_stack = setup.urls.console_url.is_some();
        // On a stack, drops wait for the process's exit, which hands them
        // to the janitor.
        let deferred = if on_stack {
            crate::provision::admin::DEFERRED_DROPS
        } else {
            0
        };
        let admin = Arc::new(Admin::new(setup.urls, deferred, setup.books_conn));
        let lease = setup
            .lease
            .map(|(conn, target)| Arc::new(Lease::new(conn, target)));
        if let Some(lease) = lease.clone() {
            background.spawn(move || async move { lease.watch().await });
        }
        let worker = Worker {
            inner: Arc::new(Inner {
                clones: Arc::new(Clones::new(admin.clone(), on_stack)),
                admin,
                background,
                lease,
                cleanup: Mutex::new(setup.cleanup),
                templates: OnceMap::new(),
                stopped: Default::default(),
            }),
        };
        Ok((worker, value))
    }

    /// The error saying the stack died, once that is known.
    pub(crate) fn dead(&self) -> Option<Error> {
        self.inner.lease.as_ref().and_then(|l| l.dead())
    }

    /// Checks the lease: `Err(StackDied)` when the stack is gone. Cheap (one
    /// round trip), bounded (a few seconds), and a no-op without a lease.
    pub(crate) async fn probe(&self) -> Result<()> {
        self.on_lease(
            PROBE_TIMEOUT + RENEW_TIMEOUT + Duration::from_secs(5),
            "checking the stack's lease",
            "the background thread is busy or stuck; see the container logs",
            |lease| async move { lease.probe().await },
        )
        .await
    }

    /// Asks Docker whether both containers of the stack run: `Err(StackDied)`
    /// naming each one that does not. Does not mark the stack dead (a
    /// PgBouncer that is restarting comes back); a no-op without a stack.
    pub(crate) async fn containers(&self) -> Result<()> {
        self.on_lease(
            // Two inspections, each bounded by the Docker call limit.
            crate::docker::CALL_TIMEOUT * 2 + Duration::from_secs(5),
            "asking Docker about the stack's containers",
            "the background thread is busy or Docker is stuck; check `docker ps`",
            |lease| async move { lease.containers().await },
        )
        .await
    }

    /// Runs `check` on the lease on the background runtime within `limit`;
    /// `Ok` without a lease.
    async fn on_lease<Fut>(
        &self,
        limit: Duration,
        what: &str,
        hint: &str,
        check: impl FnOnce(Arc<Lease>) -> Fut + Send + 'static,
    ) -> Result<()>
    where
        Fut: Future<Output = Result<()>> + 'static,
    {
        let Some(lease) = self.live_lease()? else {
            return Ok(());
        };
        let checked = self.inner.background.run(move || check(lease));
        match tokio::time::timeout(limit, checked).await {
            Ok(result) => result?,
            Err(_) => Err(Error::Timeout {
                what: what.into(),
                after: limit,
                hint: hint.into(),
            }),
        }
    }

    /// The lease, or `StackDied` once the stack is known dead.
    fn live_lease(&self) -> Result<Option<Arc<Lease>>> {
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

    /// A fresh clone of `template` for one test (see [`Clones::claim`]).
    pub(crate) async fn claim(
        &self,
        template: String,
        prepared: usize,
        prepared_only: bool,
    ) -> Result<Option<Claimed>> {
        self.live_lease()?;
        let clones = self.inner.clones.clone();
        let asked = Instant::now();
        self.inner
            .background
            .run(move || async move {
                clones
                    .claim(&template, prepared, prepared_only, asked.elapsed())
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
