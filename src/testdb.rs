//! `TestDb`: the test-scoped connection factory. Fresh, unpooled sqlx
//! connections through the pooler (`connect`) or straight to PostgreSQL
//! (`connect_direct`), to a database (or schema) that only this test sees.

use std::fmt;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::PgConnection;

use crate::backend::{died_or, isolate, server_for, AcquireTimings};
use crate::config::Env;
use crate::connect::open;
use crate::database::Isolation;
use crate::error::{Error, Result};
use crate::explain::{explain, EvidenceSource, Explanation};
use crate::hazard::Pooler;
use crate::profile::Profile;
use crate::target::{DbUrl, Target};
use crate::template::Template;
use crate::worker::Worker;

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
    keep_failed: bool,
    closed: bool,
    ca_pem: Option<String>,
    /// Where the servers' reports for this test can be read (the crate's
    /// stacks only): see [`TestDb::explain`].
    evidence: Option<EvidenceSource>,
    timings: AcquireTimings,
    /// A template clone (the worker sizes its pool by the clones in use).
    clone: bool,
    /// Connection tasks of the tokio-postgres clients handed out.
    #[cfg(feature = "tokio-postgres")]
    tokio_postgres_tasks: crate::tokio_pg::ConnectionTasks,
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
    template: Option<Template>,
    profile: Option<Profile>,
    test_name: Option<String>,
    connect_timeout: Option<Duration>,
    env: Option<Env>,
}

impl TestDbBuilder {
    /// Runs against this target instead of the one the environment names.
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// Starts the database as a clone of `template` (migrations and seeds
    /// applied once, see [`Template`]) instead of an empty one.
    pub fn template(mut self, template: Template) -> Self {
        self.template = Some(template);
        self
    }

    /// Runs behind this pooler profile (default: `PGBF_PROFILE`, else the
    /// settings from the environment, i.e. [`Profile::SupabaseShared`]).
    /// It overrides the pooler settings of an explicit [`target`](Self::target).
    ///
    /// On an external target the server's own pooler decides; only
    /// [`Profile::Direct`] changes anything there (`connect()` then uses
    /// `TEST_DIRECT_URL`).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// The name used for `application_name` and in the database name
    /// (default: the current test's name, taken from its thread).
    pub fn test_name(mut self, name: impl Into<String>) -> Self {
        self.test_name = Some(name.into());
        self
    }

    /// Reads the `PGBF_*` variables and the target from `env` instead of the
    /// process environment and `.env` (for tools and tests that assemble
    /// their own environment).
    pub fn env(mut self, env: Env) -> Self {
        self.env = Some(env);
        self
    }

    /// How long `connect()` may take (default 10 s, or `PGBF_CONNECT_TIMEOUT_SECS`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Creates the test's database (starting or joining the stack if needed).
    pub async fn build(self) -> Result<TestDb> {
        let env = match self.env {
            Some(env) => env,
            None => Env::load()?,
        };
        // Every variable is read up front: a bad value fails before any work.
        let keep_failed = env.flag("PGBF_KEEP_FAILED")?;
        let prepared_clones = env_prepared_clones(&env)?;
        // Explicit builder values win over the environment: PGBF_PROFILE
        // shapes only the target the environment names.
        let explicit_target = self.target.is_some();
        let target = match self.target {
            Some(t) => t,
            None => Target::resolve(&env)?,
        };
        warn_once(&target);
        let connect_timeout = match self.connect_timeout {
            Some(t) => t,
            None => env_connect_timeout(&env)?,
        };
        let profile = match self.profile {
            Some(p) => Some(p),
            None if explicit_target => None,
            None => env
                .get("PGBF_PROFILE")
                .map(str::parse::<Profile>)
                .transpose()?,
        };
        let test_name = self.test_name.unwrap_or_else(current_test_name);
        let target = match (target, self.profile) {
            (Target::Containers(settings), Some(p)) => Target::Containers(p.apply(settings)),
            (target, _) => target,
        };
        let started = Instant::now();
        let created = std::time::SystemTime::now();
        // A stack found dead while preparing the database is replaced once.
        let mut attempt = 0;
        let mut timings = AcquireTimings::default();
        let (worker, server, isolation) = loop {
            let stack_started = Instant::now();
            let (worker, server) = server_for(&target, profile, connect_timeout).await?;
            timings.stack += stack_started.elapsed();
            match isolate(
                &worker,
                &server,
                self.template.as_ref(),
                prepared_clones,
                &test_name,
                &mut timings,
            )
            .await
            {
                Ok(isolation) => break (worker, server, isolation),
                Err(Error::StackDied { .. })
                    if attempt == 0 && matches!(target, Target::Containers(_)) =>
                {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        };
        timings.total = started.elapsed();
        tracing::debug!(
            test = %test_name,
            isolation = ?isolation,
            elapsed_ms = timings.total.as_secs_f64() * 1e3,
            stack_ms = timings.stack.as_secs_f64() * 1e3,
            template_ms = timings.template.as_secs_f64() * 1e3,
            queued_ms = timings.queued.as_secs_f64() * 1e3,
            claim_ms = timings.claim.as_secs_f64() * 1e3,
            prepared = timings.prepared,
            "test database ready"
        );
        let (pooled, direct) = match &isolation {
            Isolation::Database(name) => (
                server.pooled.with_database(name),
                server.direct.as_ref().map(|d| d.with_database(name)),
            ),
            Isolation::Schema(_) => (server.pooled.clone(), server.direct.clone()),
        };
        let pooled = match (profile.is_some_and(Profile::is_direct), &direct) {
            (false, _) => pooled,
            (true, Some(direct)) => direct.clone(),
            (true, None) => {
                return Err(Error::DirectUrlRequired {
                    feature: "Profile::Direct",
                });
            }
        };
        let evidence = match (&server.stack, &isolation, &direct) {
            (Some((stack_id, pooler)), Isolation::Database(database), Some(direct)) => {
                Some(EvidenceSource {
                    direct: direct.clone(),
                    database: database.clone(),
                    stack_id: stack_id.clone(),
                    pooler: pooler.clone(),
                    since: created,
                })
            }
            _ => None,
        };
        Ok(TestDb {
            clone: self.template.is_some() && server.databases,
            timings,
            evidence,
            test_name,
            isolation,
            pooled,
            direct,
            connect_timeout,
            worker,
            keep_failed,
            closed: false,
            ca_pem: server.ca_pem,
            #[cfg(feature = "tokio-postgres")]
            tokio_postgres_tasks: Default::default(),
        })
    }
}

fn env_connect_timeout(env: &Env) -> Result<Duration> {
    Ok(env
        .number(
            "PGBF_CONNECT_TIMEOUT_SECS",
            1..=u32::MAX,
            "a whole number of seconds >= 1",
        )?
        .map_or(DEFAULT_CONNECT_TIMEOUT, |n| {
            Duration::from_secs(u64::from(n))
        }))
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
fn env_prepared_clones(env: &Env) -> Result<usize> {
    Ok(env
        .number(
            "PGBF_PREPARED_CLONES",
            0..=64,
            "a whole number from 0 to 64",
        )?
        .map_or(2, |n| n as usize))
}

impl TestDb {
    /// A test database on the target the environment names (`TEST_DATABASE_URL`
    /// or containers).
    pub async fn new() -> Result<TestDb> {
        TestDb::builder().build().await
    }

    /// A test database behind `profile` (see [`Profile`]): one test can run
    /// against several with rstest's `#[values(..)]`.
    ///
    /// ```no_run
    /// # use pgbouncer_fixtures::sqlx; // in your crate: your own sqlx dependency
    /// use pgbouncer_fixtures::{Profile, TestDb};
    /// use rstest::rstest;
    ///
    /// #[rstest]
    /// #[tokio::test]
    /// async fn works_behind_every_pooler(
    ///     #[values(Profile::SupabaseShared, Profile::SupabaseDedicated, Profile::SupabaseSession, Profile::Direct)]
    ///     profile: Profile,
    /// ) {
    ///     let db = TestDb::for_profile(profile).await.unwrap();
    ///     let mut conn = db.connect().await.unwrap();
    ///     sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    /// }
    /// ```
    pub async fn for_profile(profile: Profile) -> Result<TestDb> {
        TestDb::builder().profile(profile).build().await
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

    /// The certificate authority (PEM) of the stack's TLS certificate, to
    /// test `sslmode=verify-full` / `verify-ca`: sqlx's
    /// `PgConnectOptions::ssl_root_cert_from_pem`, or write it to a file for
    /// `sslrootcert=`. `None` on an external target.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The test name used for `application_name`.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// What the servers reported for this test that the pooler explains:
    /// each hazard (42P05 / 26000 statement collisions, refused startup
    /// parameters, advisory locks and temporary tables lost between
    /// transactions, the migrator's lock left held), why it happens behind
    /// this profile, and what to change. `None` on an external target,
    /// where the crate cannot read the server's logs.
    ///
    /// A test that panics prints this on its own (when something was
    /// found) as its `TestDb` drops.
    pub async fn explain(&self) -> Result<Option<Explanation>> {
        match &self.evidence {
            Some(source) => explain(&self.test_name, source).await.map(Some),
            None => Ok(None),
        }
    }

    /// On a panicking test: the explanation, printed once to stderr.
    fn explain_panic(&self) {
        let Some(source) = self.evidence.clone() else {
            return;
        };
        if matches!(source.pooler, Pooler::Profile(p) if p.is_direct()) {
            return;
        }
        let test = self.test_name.clone();
        // Drop may run inside a runtime: gather on a thread of its own.
        let gathered = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(15), explain(&test, &source)).await
                })
                .ok()?
                .ok()
        })
        .join();
        if let Ok(Some(explanation)) = gathered {
            if !explanation.is_empty() {
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!("\n{explanation}"),
                );
            }
        }
    }

    /// Where the time went while the fixture made this test's database.
    pub fn acquire_timings(&self) -> &AcquireTimings {
        &self.timings
    }

    /// Drops the test's database (or schema) now and reports any error.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        #[cfg(feature = "tokio-postgres")]
        self.tokio_postgres_tasks.end().await;
        self.remove().await
    }

    async fn remove(&self) -> Result<()> {
        let started = Instant::now();
        let result = self.worker.admin(self.isolation.drop_steps()).await;
        // Counts the clone as released (nothing more to drop).
        self.worker.discard(Vec::new(), self.clone);
        tracing::debug!(isolation = ?self.isolation, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, ok = result.is_ok(), "test database dropped");
        result
    }
}

/// tokio-postgres (feature `tokio-postgres`): the glue is in `src/tokio_pg.rs`.
#[cfg(feature = "tokio-postgres")]
impl TestDb {
    /// A connected `tokio_postgres::Client` through the pooler, with the
    /// settings of [`connect_options`](Self::connect_options) (same database,
    /// user, `application_name`). The crate drives its connection task on the
    /// current runtime and ends it with the test's database ([`close`](Self::close)
    /// or drop): the client then reports `is_closed()`.
    ///
    /// Plain TCP (`NoTls`): the crate's stacks offer TLS without requiring it.
    /// Where TLS is required (`StackSettings::with_require_tls(true)`, or
    /// `sslmode=require` in `TEST_DATABASE_URL`) this is [`Error::TlsRequired`]:
    /// connect from [`tokio_postgres_config`](Self::tokio_postgres_config)
    /// with a TLS connector of your own.
    ///
    /// Behind a transaction pooler without prepared-statement tracking
    /// ([`Profile::SupabaseShared`]) plain `query`/`execute` with parameters
    /// and `prepare`d statements fail; `query_typed`/`execute_typed` and
    /// `simple_query` work (README, "tokio-postgres").
    pub async fn connect_tokio_postgres(&self) -> Result<tokio_postgres::Client> {
        self.open_tokio_postgres("pooler", &self.pooled, self.connect_options())
            .await
    }

    /// [`connect_tokio_postgres`](Self::connect_tokio_postgres) straight to
    /// PostgreSQL: for migrations and session features.
    pub async fn connect_tokio_postgres_direct(&self) -> Result<tokio_postgres::Client> {
        let options = self.connect_options_direct()?;
        let url = self.direct.as_ref().ok_or(Error::DirectUrlRequired {
            feature: "connect_tokio_postgres_direct()",
        })?;
        self.open_tokio_postgres("direct endpoint", url, options)
            .await
    }

    /// The `tokio_postgres::Config` of [`connect_tokio_postgres`](Self::connect_tokio_postgres)
    /// (host, port, user, password, database, `application_name` and TLS mode
    /// of [`connect_options`](Self::connect_options)), for code that connects
    /// itself, e.g. a deadpool-postgres pool. Connections made from it are
    /// yours to drive and end.
    pub fn tokio_postgres_config(&self) -> tokio_postgres::Config {
        crate::tokio_pg::config(&self.pooled, &self.connect_options(), self.connect_timeout)
    }

    /// The `tokio_postgres::Config` of [`connect_tokio_postgres_direct`](Self::connect_tokio_postgres_direct).
    pub fn tokio_postgres_config_direct(&self) -> Result<tokio_postgres::Config> {
        let url = self.direct.as_ref().ok_or(Error::DirectUrlRequired {
            feature: "tokio_postgres_config_direct()",
        })?;
        let options = self.connect_options_direct()?;
        Ok(crate::tokio_pg::config(url, &options, self.connect_timeout))
    }

    async fn open_tokio_postgres(
        &self,
        kind: &'static str,
        url: &DbUrl,
        options: PgConnectOptions,
    ) -> Result<tokio_postgres::Client> {
        if let Some(dead) = self.worker.dead() {
            return Err(dead);
        }
        match crate::tokio_pg::connect_url(kind, url, &options, self.connect_timeout).await {
            Ok((client, connection)) => {
                self.tokio_postgres_tasks.spawn(connection);
                Ok(client)
            }
            Err(e @ Error::TlsRequired { .. }) => Err(e),
            Err(e) => Err(died_or(&self.worker, e).await),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        #[cfg(feature = "tokio-postgres")]
        self.tokio_postgres_tasks.abort();
        if self.closed {
            return;
        }
        if std::thread::panicking() {
            self.explain_panic();
        }
        if self.keep_failed && std::thread::panicking() {
            let mut stderr = std::io::stderr();
            let _ = std::io::Write::write_fmt(
                &mut stderr,
                format_args!(
                    "pgbouncer-fixtures: PGBF_KEEP_FAILED: kept {:?} of failed test {}: {}\n",
                    self.isolation,
                    self.test_name,
                    self.pooled.redacted()
                ),
            );
            return;
        }
        // Dropped in the background on the stack's background runtime: the test does not
        // wait for it, and no other test's claim waits behind it. Queued
        // drops are done before the process exits (or the stack is reaped).
        self.worker.discard(self.isolation.drop_steps(), self.clone);
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

// `TestDbBuilder::build()` must be usable inside `tokio::spawn`.
#[allow(dead_code)]
fn build_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    assert_send(TestDb::builder().build());
}
