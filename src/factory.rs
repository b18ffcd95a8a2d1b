//! `TestDb`: the test-scoped connection factory. Fresh, unpooled sqlx
//! connections through the pooler (`connect`) or straight to PostgreSQL
//! (`connect_direct`), to a database (or schema) that only this test sees.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::database::{unique_name, Isolation};
use crate::error::{Error, Result};
use crate::stack::Stack;
use crate::target::{DbUrl, Env, ExternalTarget, Target};
use crate::worker::{shutdown_at_exit, Worker, WorkerSetup};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A test's own database, and the factory of connections to it.
///
/// Get one from the [`test_db`](crate::test_db()) fixture, or
/// [`TestDb::new`] / [`TestDb::builder`]. Dropping it drops the database (or
/// schema) it created; [`TestDb::close`] does the same and reports errors.
///
/// `connect()` gives what production code meets behind PgBouncer in
/// transaction mode: a fresh `PgConnection` through the pooler with
/// `statement_cache_capacity(0)`. That setting is **not** enough to avoid
/// prepared-statement collisions under concurrency (see the README): the
/// failures you see here are the ones production would see.
pub struct TestDb {
    test_name: String,
    isolation: Isolation,
    pooled: DbUrl,
    direct: Option<DbUrl>,
    connect_timeout: Duration,
    worker: Worker,
    closed: bool,
}

impl fmt::Debug for TestDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDb")
            .field("test_name", &self.test_name)
            .field("isolation", &self.isolation)
            .field("pooled", &self.pooled)
            .field("direct", &self.direct)
            .finish()
    }
}

/// Options for a [`TestDb`]; [`TestDb::builder`] makes one.
#[derive(Debug, Default)]
pub struct TestDbBuilder {
    target: Option<Target>,
    test_name: Option<String>,
    connect_timeout: Option<Duration>,
}

impl TestDbBuilder {
    /// Runs against this target instead of the one the environment names.
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// The name used for `application_name` and in the database name
    /// (default: the current test's name, taken from its thread).
    pub fn test_name(mut self, name: impl Into<String>) -> Self {
        self.test_name = Some(name.into());
        self
    }

    /// How long `connect()` may take (default 10 s, or `PGBF_CONNECT_TIMEOUT_SECS`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Creates the test's database (starting or joining the stack if needed).
    pub async fn build(self) -> Result<TestDb> {
        let env = Env::load()?;
        let target = match self.target {
            Some(t) => t,
            None => Target::resolve(&env)?,
        };
        warn_once(&target);
        let connect_timeout = match self.connect_timeout {
            Some(t) => t,
            None => env_connect_timeout(&env)?,
        };
        let test_name = self.test_name.unwrap_or_else(current_test_name);
        let name = unique_name(&test_name);
        let started = Instant::now();
        let (worker, isolation, pooled, direct) = match target {
            Target::Containers(settings) => {
                // A stack found dead while creating the database is replaced once.
                let mut attempt = 0;
                loop {
                    let stack = Stack::shared(&settings).await?;
                    let e = stack.endpoints();
                    let isolation = Isolation::Database(name.clone());
                    match create(stack.worker(), &isolation).await {
                        Ok(()) => {
                            break (
                                stack.worker().clone(),
                                isolation,
                                e.pooled_url(&name),
                                Some(e.direct_url(&name)),
                            )
                        }
                        Err(Error::StackDied { .. }) if attempt == 0 => attempt += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            Target::External(ext) => {
                let isolated = external(&ext, name, connect_timeout).await?;
                isolated.0.admin(isolated.1.create_steps()).await?;
                isolated
            }
        };
        tracing::debug!(
            test = %test_name,
            isolation = ?isolation,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "test database created"
        );
        Ok(TestDb {
            test_name,
            isolation,
            pooled,
            direct,
            connect_timeout,
            worker,
            closed: false,
        })
    }
}

/// Creates the test's database; a failure on a dead stack says so.
async fn create(worker: &Worker, isolation: &Isolation) -> Result<()> {
    match worker.admin(isolation.create_steps()).await {
        Ok(()) => Ok(()),
        Err(e) => Err(died_or(worker, e).await),
    }
}

/// `StackDied` when the stack is gone, else the error as it was.
async fn died_or(worker: &Worker, error: Error) -> Error {
    match worker.probe().await {
        Err(died @ Error::StackDied { .. }) => died,
        _ => error,
    }
}

fn env_connect_timeout(env: &Env) -> Result<Duration> {
    match env.get("PGBF_CONNECT_TIMEOUT_SECS") {
        None => Ok(DEFAULT_CONNECT_TIMEOUT),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Duration::from_secs(n)),
            _ => Err(Error::InvalidEnv {
                var: "PGBF_CONNECT_TIMEOUT_SECS",
                value: crate::target::redact_value(v),
                expected: "a whole number of seconds >= 1",
            }),
        },
    }
}

fn warn_once(target: &Target) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let warnings = target.warnings();
    if !warnings.is_empty() {
        WARNED.call_once(|| {
            for w in warnings {
                tracing::warn!("{w}");
            }
        });
    }
}

/// The test's name: libtest names each test's thread after the test.
fn current_test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" && !name.starts_with("tokio-runtime") => name.to_string(),
        _ => "pgbouncer-fixtures".to_string(),
    }
}

type Isolated = (Worker, Isolation, DbUrl, Option<DbUrl>);

async fn external(ext: &ExternalTarget, name: String, timeout: Duration) -> Result<Isolated> {
    if ext.create_databases {
        let direct = ext.direct.as_ref().ok_or(Error::DirectUrlRequired {
            feature: "PGBF_EXTERNAL_CREATE_DATABASES",
        })?;
        let worker = external_worker(direct.clone(), "direct endpoint", timeout).await?;
        Ok((
            worker,
            Isolation::Database(name.clone()),
            ext.pooled.with_database(&name),
            Some(direct.with_database(&name)),
        ))
    } else {
        // Non-destructive default: a schema of the test's own, made and removed by the crate.
        let worker = match &ext.direct {
            Some(direct) => external_worker(direct.clone(), "direct endpoint", timeout).await?,
            None => external_worker(ext.pooled.clone(), "pooler", timeout).await?,
        };
        Ok((
            worker,
            Isolation::Schema(name),
            ext.pooled.clone(),
            ext.direct.clone(),
        ))
    }
}

/// One admin worker per external admin URL, for the whole process.
async fn external_worker(
    admin_url: DbUrl,
    admin_kind: &'static str,
    connect_timeout: Duration,
) -> Result<Worker> {
    type Cell = Arc<tokio::sync::OnceCell<Worker>>;
    static WORKERS: Mutex<Option<HashMap<String, Cell>>> = Mutex::new(None);
    let cell = {
        let mut guard = WORKERS.lock().map_err(|_| Error::Stack {
            reason: "worker registry poisoned by an earlier panic".into(),
        })?;
        guard
            .get_or_insert_with(HashMap::new)
            .entry(admin_url.expose().to_string())
            .or_default()
            .clone()
    };
    cell.get_or_try_init(|| async {
        let (worker, ()) = Worker::spawn("pgbf-external-admin".into(), move || async move {
            Ok((
                (),
                WorkerSetup {
                    admin_url,
                    admin_kind,
                    connect_timeout,
                    console_url: None,
                    cleanup: None,
                    lease: None,
                    probe: None,
                },
            ))
        })
        .await?;
        shutdown_at_exit(&worker);
        Ok::<_, Error>(worker)
    })
    .await
    .cloned()
}

impl TestDb {
    /// A test database on the target the environment names (`TEST_DATABASE_URL`
    /// or containers).
    pub async fn new() -> Result<TestDb> {
        TestDb::builder().build().await
    }

    /// Options before creating the database.
    pub fn builder() -> TestDbBuilder {
        TestDbBuilder::default()
    }

    /// A fresh connection through the pooler (PgBouncer in transaction mode
    /// on the crate's stack), with `statement_cache_capacity(0)`,
    /// `application_name` = the test's name, and only startup parameters
    /// PgBouncer accepts.
    pub async fn connect(&self) -> Result<PgConnection> {
        self.open("pooler", &self.pooled, self.connect_options())
            .await
    }

    /// A fresh connection straight to PostgreSQL: for migrations, `LISTEN`,
    /// advisory locks and other session features.
    pub async fn connect_direct(&self) -> Result<PgConnection> {
        let options = self.connect_options_direct()?;
        let url = self.direct.as_ref().ok_or(Error::DirectUrlRequired {
            feature: "connect_direct()",
        })?;
        self.open("direct endpoint", url, options).await
    }

    /// The options `connect()` uses, for code that opens its own connections.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.tune(self.pooled.connect_options())
    }

    /// The options `connect_direct()` uses.
    pub fn connect_options_direct(&self) -> Result<PgConnectOptions> {
        let url = self.direct.as_ref().ok_or(Error::DirectUrlRequired {
            feature: "connect_options_direct()",
        })?;
        Ok(self.tune(url.connect_options()))
    }

    fn tune(&self, options: PgConnectOptions) -> PgConnectOptions {
        options
            .statement_cache_capacity(0)
            .application_name(&truncate(&self.test_name, 63))
            // sqlx sends extra_float_digits=2 by default; PgBouncer refuses it
            // unless told to ignore it. Send no such parameter.
            .extra_float_digits(None)
    }

    async fn open(
        &self,
        kind: &'static str,
        url: &DbUrl,
        options: PgConnectOptions,
    ) -> Result<PgConnection> {
        if let Some(dead) = self.worker.dead() {
            return Err(dead);
        }
        let started = Instant::now();
        let conn = match open(kind, url, &options, self.connect_timeout).await {
            Ok(conn) => conn,
            // Say "the stack died" rather than "connection refused" when that is why.
            Err(e) => return Err(died_or(&self.worker, e).await),
        };
        tracing::debug!(
            test = %self.test_name,
            endpoint = kind,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "connected"
        );
        Ok(conn)
    }

    /// URL of the test's database through the pooler. It carries the password:
    /// hand it to a driver, do not print it.
    pub fn url(&self) -> &str {
        self.pooled.expose()
    }

    /// URL of the test's database on the direct endpoint, if there is one.
    pub fn direct_url(&self) -> Option<&str> {
        self.direct.as_ref().map(DbUrl::expose)
    }

    /// The pooled URL as a redacting [`DbUrl`].
    pub fn pooled(&self) -> &DbUrl {
        &self.pooled
    }

    /// The direct URL as a redacting [`DbUrl`], if there is one.
    pub fn direct(&self) -> Option<&DbUrl> {
        self.direct.as_ref()
    }

    /// The name of the test's database (on an external target without the
    /// database opt-in: the target's database, shared with others).
    pub fn database_name(&self) -> String {
        match &self.isolation {
            Isolation::Database(name) => name.clone(),
            Isolation::Schema(_) => self.pooled.database(),
        }
    }

    /// The test's own schema, on an external target without the database
    /// opt-in. Through a transaction pooler `search_path` cannot be set per
    /// session: qualify names with it or `SET LOCAL search_path` in each transaction.
    pub fn schema(&self) -> Option<&str> {
        match &self.isolation {
            Isolation::Schema(name) => Some(name),
            Isolation::Database(_) => None,
        }
    }

    /// How this test is isolated.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The test name used for `application_name`.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// Drops the test's database (or schema) now and reports any error.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        self.remove().await
    }

    async fn remove(&self) -> Result<()> {
        let started = Instant::now();
        let result = self.worker.admin(self.isolation.drop_steps()).await;
        tracing::debug!(isolation = ?self.isolation, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, ok = result.is_ok(), "test database dropped");
        result
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Wait for the worker thread (never this runtime) so that the database
        // is gone when the handle is.
        if let Err(e) = self.worker.admin_blocking(self.isolation.drop_steps()) {
            tracing::warn!(isolation = ?self.isolation, error = %e, "could not drop the test database");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Opens one connection with a time limit, with errors that say what to change.
pub(crate) async fn open(
    kind: &'static str,
    url: &DbUrl,
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection> {
    tokio::time::timeout(timeout, PgConnection::connect_with(options))
        .await
        .map_err(|_| Error::Timeout {
            what: format!("connecting to the {kind} at {url}"),
            after: timeout,
            hint: "the server accepted TCP but did not answer the login; check that the port is a \
                   PostgreSQL or PgBouncer port, or raise PGBF_CONNECT_TIMEOUT_SECS"
                .into(),
        })?
        .map_err(|e| connect_error(kind, url, e))
}

/// Turns a driver's connect error into one that says what to change.
pub(crate) fn connect_error(kind: &'static str, url: &DbUrl, error: sqlx::Error) -> Error {
    match error {
        sqlx::Error::Io(io) => {
            let hint = if io.kind() == std::io::ErrorKind::ConnectionRefused && kind == "pooler" {
                ". On Supabase the transaction pooler listens on port 6543, the session pooler on 5432".to_string()
            } else {
                String::new()
            };
            Error::Unreachable {
                endpoint_kind: kind,
                url: url.redacted(),
                reason: io.to_string(),
                hint,
            }
        }
        sqlx::Error::Database(db) => {
            let message = db.message().to_string();
            let code = db.code().map(|c| c.to_string());
            let hint = if message.contains("unsupported startup parameter") {
                ". PgBouncer accepts only client_encoding, DateStyle, TimeZone, \
                 standard_conforming_strings and application_name at startup: remove the \
                 parameter (sqlx: PgConnectOptions::options), set it per transaction with \
                 SET LOCAL, or add it to PgBouncer's ignore_startup_parameters"
                    .to_string()
            } else if code.as_deref() == Some("28P01") || message.contains("authentication failed")
            {
                ". Check the user and password in the URL (on Supabase the pooler's user is postgres.<project-ref>)".to_string()
            } else if code.as_deref() == Some("3D000") || message.contains("does not exist") {
                ". The database does not exist (a dropped test database stays refused by PgBouncer for a while)".to_string()
            } else {
                String::new()
            };
            Error::ConnectRefused {
                endpoint_kind: kind,
                url: url.redacted(),
                reason: message,
                hint,
                code,
            }
        }
        other => Error::ConnectRefused {
            endpoint_kind: kind,
            url: url.redacted(),
            reason: crate::target::redact(&other.to_string()),
            hint: String::new(),
            code: None,
        },
    }
}
