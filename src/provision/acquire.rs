//! The backend a test runs on, behind one description: the crate's own
//! stack (containers) or an external server (`TEST_DATABASE_URL`). Both
//! yield a [`Server`] and the worker that does its admin work; `TestDb`
//! never branches on which. Per-test isolation (a database, a template
//! clone, or a schema) is made here too.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::explain::hazard::Pooler;
use crate::provision::admin::AdminUrls;
use crate::provision::database::{unique_name, Isolation};
use crate::provision::template::{ResolvedTemplate, Template};
use crate::provision::worker::{Worker, WorkerSetup};
use crate::stack::Stack;
use crate::support::registry::OnceMap;
use crate::target::profile::Profile;
use crate::target::settings::StackSettings;
use crate::target::{DbUrl, ExternalTarget, Target};

/// Where the time went while the fixture made a test's database: see
/// [`TestDb::acquire_timings`] (the README's breakdown is made of these).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AcquireTimings {
    /// Starting or joining the run's stack (about zero once this process
    /// holds it).
    pub stack: Duration,
    /// Checking (or building) the template: zero when a prepared clone was
    /// there at once.
    pub template: Duration,
    /// Waiting for the background worker to take the request up.
    pub queued: Duration,
    /// Taking a prepared clone (one round trip), or cloning on demand, or
    /// creating an empty database or schema.
    pub claim: Duration,
    /// Whether the test got a clone prepared ahead of time.
    pub prepared: bool,
    /// All of it, as the test saw it.
    pub total: Duration,
}

/// The server of `target` and its worker: the run's stack (started or
/// joined) or the external server.
pub(crate) async fn server_for(
    target: &Target,
    profile: Option<Profile>,
    connect_timeout: Duration,
) -> Result<(Worker, Server)> {
    match target {
        Target::Containers(settings) => {
            let stack = Stack::shared(settings).await?;
            let e = stack.endpoints();
            let server = Server {
                stack: Some((stack.id().to_string(), pooler_of(profile, settings))),
                pooled: e.pooled_url("postgres"),
                direct: Some(e.direct_url("postgres")),
                databases: true,
                ca_pem: e.ca_cert_pem().map(str::to_string),
            };
            Ok((stack.worker().clone(), server))
        }
        Target::External(ext) => external(ext, connect_timeout).await,
    }
}

/// Makes the test's database (a template clone or an empty one) or schema;
/// a failure on a dead stack says so.
pub(crate) async fn isolate(
    worker: &Worker,
    server: &Server,
    template: Option<&Template>,
    prepared_clones: usize,
    test_name: &str,
    timings: &mut AcquireTimings,
) -> Result<Isolation> {
    let result = match (template, server.databases) {
        (Some(template), true) => {
            let resolved = template.resolve(prepared_clones).await?;
            let admin = server.direct.as_ref().ok_or(Error::DirectUrlRequired {
                feature: "templates",
            })?;
            claim_clone(worker, &resolved, admin, timings)
                .await
                .map(Isolation::Database)
        }
        (Some(_), false) => {
            return Err(Error::Template {
                reason: "on an external server templates need one database per test: set \
                         PGBF_EXTERNAL_CREATE_DATABASES=1 and TEST_DIRECT_URL"
                    .into(),
            });
        }
        (None, databases) => {
            let name = unique_name(test_name);
            let isolation = if databases {
                Isolation::Database(name)
            } else {
                Isolation::Schema(name)
            };
            let started = Instant::now();
            let created = worker.admin(isolation.create_steps()).await;
            timings.claim = started.elapsed();
            created.map(|()| isolation)
        }
    };
    match result {
        Ok(isolation) => Ok(isolation),
        Err(e) => Err(died_or(worker, e).await),
    }
}

/// A clone of the template: a prepared one when there is one (a clone
/// proves its template is built: no check needed), else the template is
/// checked (built if missing) and cloned on demand.
async fn claim_clone(
    worker: &Worker,
    resolved: &ResolvedTemplate,
    admin: &DbUrl,
    timings: &mut AcquireTimings,
) -> Result<String> {
    let started = Instant::now();
    let mut claimed = worker
        .claim(resolved.name.clone(), resolved.prepared, true)
        .await?;
    if claimed.is_none() {
        let checking = Instant::now();
        ensure_template_once(worker, resolved, admin).await?;
        timings.template = checking.elapsed();
        claimed = worker
            .claim(resolved.name.clone(), resolved.prepared, false)
            .await?;
    }
    let claimed = claimed.ok_or_else(|| Error::Template {
        reason: "the worker made no clone of the template".into(),
    })?;
    timings.prepared = claimed.prepared;
    timings.queued = claimed.queued;
    // The worker's share; the rest of `started.elapsed()` is the template
    // check and the channel round trips.
    timings.claim = claimed.took;
    tracing::trace!(
        all_ms = started.elapsed().as_secs_f64() * 1e3,
        "claimed a clone"
    );
    Ok(claimed.name)
}

/// `StackDied` when the stack is gone, else the error as it was.
pub(crate) async fn died_or(worker: &Worker, error: Error) -> Error {
    match worker.probe().await {
        Err(died @ Error::StackDied { .. }) => died,
        _ => error,
    }
}

/// The pooler of a stack, in words: its profile when its settings are one.
fn pooler_of(profile: Option<Profile>, settings: &StackSettings) -> Pooler {
    let profile = profile.or_else(|| {
        Profile::ALL
            .into_iter()
            .find(|p| !p.is_direct() && p.apply(settings.clone()) == *settings)
    });
    match profile {
        Some(p) => Pooler::Profile(p),
        None => Pooler::Other(format!(
            "this stack's PgBouncer (pool_mode={}, max_prepared_statements={})",
            settings.pool_mode, settings.max_prepared_statements
        )),
    }
}

/// A server tests run on, and how to reach a database there.
pub(crate) struct Server {
    /// On the crate's own stack: its id and the pooler in words.
    pub stack: Option<(String, Pooler)>,
    pub pooled: DbUrl,
    pub direct: Option<DbUrl>,
    /// One database per test (else one schema per test).
    pub databases: bool,
    /// The CA of the server's TLS certificate, when the crate made it.
    pub ca_pem: Option<String>,
}

async fn external(ext: &ExternalTarget, timeout: Duration) -> Result<(Worker, Server)> {
    let (admin, kind) = match (&ext.direct, ext.create_databases) {
        (Some(direct), _) => (direct.clone(), crate::connect::Endpoint::Direct),
        (None, true) => {
            return Err(Error::DirectUrlRequired {
                feature: "PGBF_EXTERNAL_CREATE_DATABASES",
            });
        }
        // Non-destructive default: a schema per test, made through the pooler.
        (None, false) => (ext.pooled.clone(), crate::connect::Endpoint::Pooler),
    };
    let worker = external_worker(admin.clone(), kind, ext.pooled.clone(), timeout).await?;
    let server = Server {
        stack: None,
        pooled: ext.pooled.clone(),
        direct: ext.direct.clone(),
        databases: ext.create_databases,
        ca_pem: None,
    };
    Ok((worker, server))
}

/// Builds (or finds) a template once per server incarnation and process
/// (a replaced stack builds it again); other processes are kept out by the
/// template's own advisory lock.
async fn ensure_template_once(
    worker: &Worker,
    template: &ResolvedTemplate,
    admin: &DbUrl,
) -> Result<()> {
    let cell = worker.templates().cell(&template.name, |_| false);
    cell.get_or_try_init(|| template.ensure(admin))
        .await
        .map(|_| ())
}

/// One admin worker per external admin URL, for the whole process.
async fn external_worker(
    admin_url: DbUrl,
    admin_kind: crate::connect::Endpoint,
    pooled: DbUrl,
    connect_timeout: Duration,
) -> Result<Worker> {
    static WORKERS: OnceMap<Worker> = OnceMap::new();
    let cell = WORKERS.cell(admin_url.expose(), |_| false);
    cell.get_or_try_init(|| async {
        let pooled_url = pooled.clone();
        let (worker, ()) = Worker::start("pgbf-external-admin".into(), move || async move {
            let urls = AdminUrls {
                admin_url,
                admin_kind,
                console_url: None,
                pooled_url,
                books_url: None,
                connect_timeout,
            };
            Ok((
                (),
                WorkerSetup {
                    urls,
                    cleanup: None,
                    lease: None,
                    books_conn: None,
                },
            ))
        })
        .await?;
        worker.shutdown_at_exit();
        Ok::<_, Error>(worker)
    })
    .await
    .cloned()
}
