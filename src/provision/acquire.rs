//! A test's own database, in one pass: a prepared clone of its template if
//! one is ready, else a clone made now (the template checked, or built,
//! once), or, without a template, an empty database or schema. The caller
//! (the fixture) says where: plain data, no knowledge of stacks.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::provision::database::{unique_name, Isolation};
use crate::provision::memory;
use crate::provision::template::{ResolvedTemplate, Template};
use crate::provision::worker::Worker;
use crate::target::DbUrl;

/// Where the time went while the fixture made a test's database: see
/// [`TestDb::acquire_timings`](crate::TestDb::acquire_timings) (docs/benchmarks.md's
/// breakdowns are made of these).
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
    /// Whether the test got a clone prepared ahead of time (ready at its
    /// claim). When false, the test waited in line for the next clone made.
    pub prepared: bool,
    /// Whether the test waited in line and its clone was made for the line
    /// (no prepared one was on its way), rather than by the pool's refill.
    pub on_demand: bool,
    /// The template's size in bytes (`pg_database_size`, on the crate's
    /// stacks; 0 without a template, or on an external server).
    pub template_bytes: u64,
    /// How long the test's clone waited for room in the stack's memory
    /// budget (zero: it did not wait). Part of `claim`.
    pub memory_wait: Duration,
    /// All of it, as the test saw it.
    pub total: Duration,
}

/// What a test's database is made of, and where.
pub(crate) struct Request<'a> {
    /// The template to clone; `None`: an empty database or schema.
    pub template: Option<&'a Template>,
    /// Prepared clones to keep ready when the template does not say.
    pub prepared_clones: usize,
    /// Part of the database's name.
    pub test_name: &'a str,
    /// One database per test (else one schema per test).
    pub databases: bool,
    /// Where templates are built: a direct URL that may create databases.
    pub direct: Option<&'a DbUrl>,
    /// The database a test's database (or its template) copies: the
    /// Supabase-shaped base of the crate's image; `None`: `template1`.
    pub base: Option<&'a str>,
}

/// Makes the test's database (a template clone or an empty one) or schema;
/// a failure on a dead stack says so.
pub(crate) async fn acquire(
    worker: &Worker,
    request: &Request<'_>,
    timings: &mut AcquireTimings,
) -> Result<Isolation> {
    let made = match (request.template, request.databases) {
        (Some(template), true) => clone_of(worker, template, request, timings)
            .await
            .map(Isolation::Database),
        (Some(_), false) => {
            return Err(Error::Template {
                reason: "on an external server templates need one database per test: set \
                         PGBF_EXTERNAL_CREATE_DATABASES=1 and TEST_DIRECT_URL"
                    .into(),
            });
        }
        (None, databases) => {
            let name = unique_name(request.test_name);
            let isolation = if databases {
                Isolation::Database(name)
            } else {
                Isolation::Schema(name)
            };
            let started = Instant::now();
            let created = worker.admin(isolation.create_steps(request.base)).await;
            timings.claim = started.elapsed();
            created.map(|()| isolation)
        }
    };
    match made {
        Ok(isolation) => Ok(isolation),
        Err(e) => Err(no_base_or(request.base, died_or(worker, e).await)),
    }
}

/// A clone of the template: a prepared one when there is one (a clone
/// proves its template is built: no check needed), else the template is
/// checked (built if missing) and cloned now.
async fn clone_of(
    worker: &Worker,
    template: &Template,
    request: &Request<'_>,
    timings: &mut AcquireTimings,
) -> Result<String> {
    let resolved = template
        .resolve(request.prepared_clones, request.base)
        .await?;
    let admin = request.direct.ok_or(Error::DirectUrlRequired {
        feature: "templates",
    })?;
    let (name, base) = (resolved.name.clone(), resolved.prepared);
    // The memory budget's check, once per template and process: a template
    // the budget cannot hold fails here, before any clone.
    let bytes = match worker.template_bytes(name.clone()).await? {
        Some(bytes) => Some(bytes),
        None if worker.has_memory_budget() => {
            let checking = Instant::now();
            ensure_template_once(worker, &resolved, admin).await?;
            timings.template = checking.elapsed();
            worker.template_bytes(name.clone()).await?
        }
        None => None,
    };
    if let Some(bytes) = bytes {
        worker.check_fits(&name, bytes, concurrent_tests())?;
        timings.template_bytes = bytes;
    }
    let started = Instant::now();
    let claimed = match worker.take_prepared(name.clone(), base).await? {
        Some(claimed) => claimed,
        None => {
            let checking = Instant::now();
            ensure_template_once(worker, &resolved, admin).await?;
            timings.template = checking.elapsed();
            match worker.clone_for_test(name.clone(), base).await {
                Ok(claimed) => claimed,
                Err(e) => return Err(clone_filled(worker, &name, bytes, e)),
            }
        }
    };
    timings.prepared = claimed.prepared;
    timings.on_demand = claimed.on_demand;
    timings.memory_wait = claimed.memory_wait;
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

/// A clear error when the image lacks the Supabase-shaped base (an image
/// of the user's own, or one older than the shape), else the error as it was.
fn no_base_or(base: Option<&str>, error: Error) -> Error {
    let missing = base.is_some_and(|base| {
        error
            .to_string()
            .contains(&format!("template database \"{base}\" does not exist"))
    });
    match missing {
        true => Error::NotSupabaseShaped {
            reason: format!(
                "the stack's PostgreSQL image has no Supabase-shaped base database ({}): it is \
                 not the crate's own image, or predates the Supabase shape. Use the crate's \
                 image (unset PGBF_POSTGRES_IMAGE), or ask for a bare database: \
                 `TestDb::builder().bare_postgres()` or PGBF_BARE_POSTGRES=1 ({error})",
                base.unwrap_or_default()
            ),
        },
        false => error,
    }
}

/// [`Error::MemoryBudget`] when a clone of `template` (`bytes`) found the
/// stack's databases' tmpfs full (`disk_full`), else the error as it was.
fn clone_filled(worker: &Worker, template: &str, bytes: Option<u64>, error: Error) -> Error {
    match (worker.memory_budget(), bytes) {
        (Some(budget), Some(bytes)) if memory::disk_full(&error) => memory::filled(
            template,
            bytes,
            budget,
            concurrent_tests(),
            memory::Filling::Clone,
        ),
        _ => error,
    }
}

/// Tests running at once in this process, as libtest runs them and the
/// budget's check counts them: the test binary's `--test-threads N`, else
/// `RUST_TEST_THREADS`, else the machine's cores.
fn concurrent_tests() -> usize {
    let args: Vec<String> = std::env::args().collect();
    let from_args =
        args.iter()
            .enumerate()
            .find_map(|(i, a)| match a.strip_prefix("--test-threads") {
                Some("") => args.get(i + 1).cloned(),
                Some(rest) => rest.strip_prefix('=').map(str::to_string),
                None => None,
            });
    from_args
        .or_else(|| std::env::var("RUST_TEST_THREADS").ok())
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `StackDied` when the stack is gone, else the error as it was.
pub(crate) async fn died_or(worker: &Worker, error: Error) -> Error {
    match worker.probe().await {
        Err(died @ Error::StackDied { .. }) => died,
        _ => error,
    }
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
    let budget = worker.memory_budget().map(|b| (b, concurrent_tests()));
    cell.get_or_try_init(|| template.ensure(admin, budget))
        .await
        .map(|_| ())
}
