//! Bringing a stack up, on its background runtime (everything Docker-bound
//! lives there): the engine, then the run's stack joined (or repaired, or
//! created under the run's lock), or a private one created; then what the
//! stack's worker needs, handed over once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::connect::Endpoint;
use crate::docker;
use crate::docker::containers::{self, Listen, PairState};
use crate::docker::images::ensure_images;
use crate::error::{Error, Result};
use crate::provision::admin::AdminUrls;
use crate::provision::worker::{Cleanup, WorkerSetup};
use crate::stack::endpoints::Endpoints;
use crate::stack::lease::{self, Lease, ProbeTarget};
use crate::stack::ready::{wait_for_postgres, wait_until_ready};
use crate::stack::run_key::RunKey;
use crate::stack::{lock, secrets, Mode};
use crate::support::runtime::Background;
use crate::target::settings::{PoolMode, StackSettings};

/// How long building the images may take (a stock base image installs
/// PostgreSQL from Debian's mirror: minutes on a slow network).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a joiner waits for an existing stack to answer before replacing it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A stack that is up, and what its worker is made of.
pub(super) struct BroughtUp {
    pub id: String,
    /// The stack's memory budget in bytes.
    pub memory_budget: u64,
    pub endpoints: Endpoints,
    pub joined: bool,
    /// This process's lease (the worker sees it too, through `setup`).
    pub lease: Arc<Lease>,
    pub setup: WorkerSetup,
}

/// A running pair as a join or a creation found it: its endpoints, this
/// process's lease and the connection through PgBouncer that proved it ready.
struct Up {
    endpoints: Endpoints,
    memory_budget: u64,
    lease: PgConnection,
    ready: PgConnection,
}

/// Brings the stack up on `background`. When the caller stops waiting,
/// the clean-up runs (a private stack's containers go).
pub(super) async fn on_background(
    background: &Background,
    mode: Mode,
    settings: StackSettings,
) -> Result<BroughtUp> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = background.spawn(move || async move {
        let outcome = bring_up(mode, settings).await;
        if let Err(Ok(up)) = tx.send(outcome) {
            // Nobody will use it: clean up now.
            if let Some(cleanup) = up.setup.cleanup {
                cleanup.await;
            }
        }
    });
    match rx.await {
        Ok(made) if spawned => made,
        _ => Err(Error::Stack {
            reason: "the background thread ended during start-up".into(),
        }),
    }
}

async fn bring_up(mode: Mode, settings: StackSettings) -> Result<BroughtUp> {
    // The process's engine: the one testcontainers builds the images on too.
    let started = Instant::now();
    let engine = docker::engine().await?;
    let docker = engine.connect().await?;
    let host = engine.published_host();
    let id = mode.id().to_string();
    let (up, joined) = match &mode {
        Mode::Private(_) => (create(&docker, host, &id, false, &settings).await?, false),
        Mode::Shared(run) => {
            let engine_at = started.elapsed();
            join_or_create(&docker, host, run, &settings, engine_at).await?
        }
    };
    let Up {
        endpoints,
        memory_budget,
        lease,
        ready,
    } = up;
    // Claims and hand-overs are one statement each: through PgBouncer a
    // login costs no server backend, unless it pins one for the session.
    let books_via_pooler = settings.pool_mode != PoolMode::Session;
    let books_conn = if books_via_pooler {
        Some(ready)
    } else {
        let _ = ready.close().await;
        None
    };
    let cleanup = match mode {
        Mode::Private(_) => {
            let (docker, id) = (docker.clone(), id.clone());
            Some(Box::pin(async move {
                containers::remove_pair(&docker, &id).await;
                tracing::info!(stack = %id, "stack removed");
            }) as Cleanup)
        }
        // The run's stack outlives this process; the lease's end lets it go.
        Mode::Shared(_) => None,
    };
    let lease = Arc::new(Lease::new(
        lease,
        ProbeTarget {
            postgres_container: containers::postgres_name(&id),
            stack_id: id.clone(),
            docker,
            endpoints: endpoints.clone(),
            pool_mode: settings.pool_mode,
        },
    ));
    let setup = WorkerSetup {
        urls: AdminUrls {
            admin_url: endpoints.direct_url("postgres"),
            admin_kind: Endpoint::Direct,
            connect_timeout: Duration::from_secs(10),
            console_url: Some(endpoints.console_url()),
            pooled_url: endpoints.pooled_url("postgres"),
            books_url: books_via_pooler.then(|| endpoints.pooled_url("postgres")),
        },
        on_stack: true,
        cleanup,
        lease: Some(lease.clone()),
        books_conn,
        memory_budget: Some(memory_budget),
    };
    Ok(BroughtUp {
        id,
        memory_budget,
        endpoints,
        joined,
        lease,
        setup,
    })
}

/// The run's stack: joined if it answers, else, under the run's lock,
/// joined once more (waiting for its creator), repaired or created.
/// `true`: joined.
async fn join_or_create(
    docker: &bollard::Docker,
    host: &str,
    run: &RunKey,
    settings: &StackSettings,
    engine_at: Duration,
) -> Result<(Up, bool)> {
    let started = Instant::now();
    let id = &run.key;
    // A stack that answers is joined without the lock, which only
    // serialises creating one: nextest starts processes two at a time, and
    // a joiner used to wait ~20 ms for the other's checks.
    let mut found = join(docker, host, id, settings, Patience::Once).await?;
    let checked_at = started.elapsed();
    // Serialises create-or-repair between the run's processes; the kernel
    // releases it if this process dies. Dropped at the end of this
    // function: the lock file is unlinked, then unlocked.
    let mut held = None;
    if found.is_none() {
        held = Some(lock::lock(&run.key, settings.startup_timeout).await?);
        found = join(docker, host, id, settings, Patience::Repair).await?;
    }
    if let Some(up) = found {
        // A join is on every nextest process's path: where it goes.
        tracing::debug!(
            stack = %id,
            engine_ms = engine_at.as_secs_f64() * 1e3,
            check_ms = checked_at.as_secs_f64() * 1e3,
            locked = held.is_some(),
            all_ms = (engine_at + started.elapsed()).as_secs_f64() * 1e3,
            "joined the run's stack"
        );
        return Ok((up, true));
    }
    lock::remove_stale_locks();
    crate::stack::gc::sweep(docker).await;
    Ok((create(docker, host, id, true, settings).await?, false))
}

/// How hard a join tries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// One attempt per check, nothing removed: the first look, without the
    /// lock (a stack being created does not answer yet: its creator holds
    /// the lock, and the caller waits for it there).
    Once,
    /// Under the lock: waits up to [`JOIN_TIMEOUT`] for the stack to answer,
    /// and removes a broken or unanswering one (`None`: create a new one).
    Repair,
}

/// Joins the running stack `id`, re-checking it: a lease, and a query
/// through PgBouncer, whose connection it returns too (the process's first
/// bookkeeping connection).
async fn join(
    docker: &bollard::Docker,
    host: &str,
    id: &str,
    settings: &StackSettings,
    patience: Patience,
) -> Result<Option<Up>> {
    let info = match containers::pair_state(docker, id).await? {
        PairState::Absent => return Ok(None),
        PairState::Running(info) => info,
        PairState::Broken(_) if patience == Patience::Once => return Ok(None),
        PairState::Broken(why) => {
            tracing::info!(stack = id, why, "replacing a broken stack of this run");
            containers::remove_pair(docker, id).await;
            return Ok(None);
        }
    };
    let wait = match patience {
        Patience::Once => Duration::ZERO,
        Patience::Repair => JOIN_TIMEOUT,
    };
    let memory_budget = match info.memory_budget {
        Some(budget) => budget,
        None => stack_budget(docker, settings).await,
    };
    let checked = match Endpoints::of(&info, host, settings.require_tls) {
        // Both at once: a join is on every nextest process's path.
        Ok(endpoints) => tokio::try_join!(
            lease::take(&endpoints, settings.pool_mode, wait),
            wait_until_ready(&endpoints, wait)
        )
        .map(|(lease, ready)| Up {
            endpoints,
            memory_budget,
            lease,
            ready,
        }),
        Err(e) => Err(e),
    };
    match checked {
        Ok(up) => Ok(Some(up)),
        Err(e) if patience == Patience::Once => {
            tracing::debug!(stack = id, error = %e, "the run's stack did not answer at once; checking again under the lock");
            Ok(None)
        }
        Err(e) => {
            tracing::info!(stack = id, error = %e, "replacing a stack of this run that does not answer");
            containers::remove_pair(docker, id).await;
            Ok(None)
        }
    }
}

/// Creates stack `id`, waits until it answers (its ports published on
/// `host`), and takes this process's lease.
async fn create(
    docker: &bollard::Docker,
    host: &str,
    id: &str,
    shared: bool,
    settings: &StackSettings,
) -> Result<Up> {
    let build_started = Instant::now();
    // testcontainers builds missing images: it must reach the same engine
    // (two `docker info` calls, only when an image is missing).
    let engine_agrees = || async { docker::engine_checked().await.map(|_| ()) };
    // Where the pair will listen (one `docker info`) while the images are checked.
    let (images, listen, memory_budget) = tokio::join!(
        tokio::time::timeout(
            IMAGE_TIMEOUT,
            ensure_images(
                docker,
                &settings.images,
                settings.postgres_version,
                engine_agrees,
            ),
        ),
        containers::plan_listen(docker, settings),
        stack_budget(docker, settings)
    );
    let mut listen = listen?;
    let images = images.map_err(|_| Error::Timeout {
        what: "building the stack's images".into(),
        after: IMAGE_TIMEOUT,
        hint: "the Debian mirror or the Docker build is stuck; run `docker build` of \
                   docker/*.Dockerfile by hand to see where, or set PGBF_POSTGRES_IMAGE / \
                   PGBF_PGBOUNCER_IMAGE to images you have"
            .into(),
    })??;
    tracing::debug!(
        elapsed_ms = build_started.elapsed().as_millis() as u64,
        "images ready"
    );
    let password = secrets::random_password();
    let verifier = secrets::scram_verifier(&password, settings.scram_iterations);
    let tls = crate::stack::tls::generate(host)?;
    let secrets = containers::Secrets {
        password: &password,
        scram_verifier: &verifier,
        tls: &tls,
    };
    let mut attempt = 1;
    loop {
        tracing::debug!(?listen, attempt, "the pair's network");
        // (create_pair removes what it made when it fails.)
        let made = containers::create_pair(
            docker,
            id,
            shared,
            settings,
            listen,
            &images,
            &secrets,
            memory_budget,
        )
        .await;
        let up = match made {
            Ok(()) => {
                let up = until_pair_stops(docker, id, pair_up(docker, host, id, settings)).await;
                let up = up.map(|up| Up {
                    memory_budget,
                    ..up
                });
                if up.is_err() {
                    containers::remove_pair(docker, id).await;
                }
                up
            }
            Err(e) => Err(e),
        };
        match up {
            // On the host network a server that stopped while starting
            // (`Stack`), or before PgBouncer's container could join it
            // (`Docker`), most likely lost its port to another process in
            // between: once more on other ports. A timeout is not retried: it
            // would double the wait.
            Err(e @ (Error::Stack { .. } | Error::Docker { .. }))
                if matches!(listen, Listen::Host(_)) && attempt < 2 =>
            {
                tracing::debug!(error = %e, "the pair stopped while starting; new ports");
                listen = containers::plan_listen(docker, settings).await?;
                attempt += 1;
            }
            up => return up,
        }
    }
}

/// The running pair's endpoints, this process's lease and the readiness
/// connection, once both answer.
async fn pair_up(
    docker: &bollard::Docker,
    host: &str,
    id: &str,
    settings: &StackSettings,
) -> Result<Up> {
    let info = match containers::pair_state(docker, id).await? {
        PairState::Running(info) => info,
        PairState::Absent => {
            return Err(Error::Stack {
                reason: "the containers vanished right after starting; see `docker events`".into(),
            })
        }
        PairState::Broken(why) => {
            return Err(Error::Stack {
                reason: format!("the containers stopped right after starting ({why}); run the stack's image by hand to see its log"),
            })
        }
    };
    let endpoints = Endpoints::of(&info, host, settings.require_tls)?;
    // PostgreSQL accepts logins first (it listens a few ms before its role
    // has the stack's password): a server login PgBouncer tried in between
    // would fail, and PgBouncer waits `server_login_retry` (1 s) before the
    // next one, with the lease (through PgBouncer) waiting on it.
    wait_for_postgres(&endpoints, settings.startup_timeout).await?;
    // Then the lease: the watchdog's start-up grace is counting.
    let lease = lease::take(&endpoints, settings.pool_mode, settings.startup_timeout).await?;
    let ready = wait_until_ready(&endpoints, settings.startup_timeout).await?;
    Ok(Up {
        memory_budget: info.memory_budget.unwrap_or_default(),
        endpoints,
        lease,
        ready,
    })
}

/// `work` on a new pair, unless the pair stops first (a server that could
/// not start): then an error within a second, not at the start-up timeout.
async fn until_pair_stops<T>(
    docker: &bollard::Docker,
    id: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(problem) = containers::pair_problem(docker, id).await? {
                    return Err(Error::Stack {
                        reason: format!(
                            "the stack stopped while starting ({problem}); run the stack's image by hand to see its log"
                        ),
                    });
                }
            }
        }
    }
}

/// The memory budget of a stack made with `settings`: theirs, else the
/// default from the engine's memory (one `docker info`).
async fn stack_budget(docker: &bollard::Docker, settings: &StackSettings) -> u64 {
    match settings.memory_budget {
        Some(budget) => budget,
        None => crate::target::memory::default_budget(docker::client::engine_memory(docker).await),
    }
}
