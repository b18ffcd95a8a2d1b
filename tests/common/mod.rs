//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod contract_sql;

use std::process::Command;

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{ActAs, Profile, Template, TestDb, TestDbBuilder};
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};

/// Runs the docker CLI and returns its stdout (panics, failing the test, on failure).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the crate's `gc --stack <id>`, asserts it succeeded, returns its stdout.
pub fn gc_stack(id: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pgbouncer-fixtures"))
        .args(["gc", "--stack", id])
        .output()
        .expect("the crate's binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Ids of the containers (running or not) carrying `label` (`key` or `key=value`).
/// Never count containers globally: another run may share the Docker host.
pub fn containers_with(label: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label={label}")])
        .lines()
        .map(str::to_string)
        .collect()
}

/// A container's log (stdout and stderr) followed into a file from now
/// until dropped: what a container said survives its removal (the stack's
/// containers remove themselves once stopped), for a failing test to show.
pub struct FollowedLog {
    child: std::process::Child,
    file: tempfile::NamedTempFile,
}

impl FollowedLog {
    /// Follows the log of container `name` (its whole log so far too).
    pub fn of(name: &str) -> FollowedLog {
        let file = tempfile::NamedTempFile::new().unwrap();
        let out = file.reopen().unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("docker")
            .args(["logs", "-f", "-t", name])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("docker CLI runs");
        FollowedLog { child, file }
    }

    /// The last `n` lines the container wrote.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.file.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for FollowedLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ids of the containers of stack `id`.
pub fn stack_containers(id: &str) -> Vec<String> {
    containers_with(&format!("pgbouncer-fixtures.stack={id}"))
}

/// The Docker id of a container, or None when it does not exist.
pub fn container_id(name: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .expect("docker CLI runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A run id nobody else uses: fault tests get stacks of their own.
pub fn unique_run_id(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{what}-{}-{nanos}", std::process::id())
}

/// SQL a test built at run time, as sqlx's free functions (`query*`,
/// `raw_sql`) take it under either sqlx major: the `&str` itself under 0.8;
/// 0.9 takes only a `&'static str` or an `AssertSqlSafe`.
#[cfg(feature = "sqlx-0-8")]
pub fn audited(sql: &str) -> &str {
    sql
}

/// [`audited`] under sqlx 0.9: the `&str` wrapped in `AssertSqlSafe`.
#[cfg(not(feature = "sqlx-0-8"))]
pub fn audited(sql: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(sql)
}

/// Runs one statement with the simple protocol (no prepared statement) and
/// returns the first row.
pub async fn one(conn: &mut PgConnection, sql: &str) -> PgRow {
    sqlx::raw_sql(audited(sql))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
}

/// The first column of the first row, as text (NULL -> None).
pub async fn text(conn: &mut PgConnection, sql: &str) -> Option<String> {
    one(conn, sql).await.get::<Option<String>, _>(0)
}

/// The first column of the first row, as i64.
pub async fn int(conn: &mut PgConnection, sql: &str) -> i64 {
    one(conn, sql).await.get::<i64, _>(0)
}

/// Connects with `options`, asks `select 41 + 1` and closes: the answer, or
/// the first error (a refused login included).
pub async fn answers(options: &sqlx::postgres::PgConnectOptions) -> Result<i32, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let n = sqlx::raw_sql("select 41 + 1")
        .fetch_one(&mut conn)
        .await?
        .get(0);
    conn.close().await?;
    Ok(n)
}

/// A direct connection to the `postgres` database of the test's server.
pub async fn server_admin(db: &TestDb) -> PgConnection {
    let url = db
        .direct_db_url()
        .expect("a direct endpoint")
        .with_database("postgres");
    PgConnection::connect(url.expose())
        .await
        .expect("direct admin connection")
}

/// Whether a database of that name exists.
pub async fn database_exists(admin: &mut PgConnection, name: &str) -> bool {
    let sql = format!(
        "select count(*)::int8 from pg_database where datname = '{}'",
        name.replace('\'', "''")
    );
    int(admin, &sql).await == 1
}

/// Whether database `name` is gone within `limit` (a dropped `TestDb`
/// handle drops its database in the background, soon after).
#[allow(dead_code)]
pub async fn database_gone_within(
    admin: &mut PgConnection,
    name: &str,
    limit: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !database_exists(admin, name).await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The password inside a `scheme://user:password@host/...` URL.
pub fn password_of(url: &str) -> String {
    let rest = &url[url.find("://").expect("a URL") + 3..];
    rest[rest.find(':').expect("a password") + 1..rest.find('@').expect("a host")].to_string()
}

/// Named prepared statements collided: every failure is 42P05 (already
/// exists) or 26000 (does not exist), and there is at least one.
pub fn assert_named_statement_collisions(outcome: &pgbouncer_fixtures::probes::Outcome) {
    assert!(
        !outcome.passed(),
        "named statements collide behind a non-tracking transaction pooler"
    );
    for failure in &outcome.failures {
        match failure.code.as_deref() {
            Some("42P05") => assert!(failure.message.contains("already exists"), "{failure:?}"),
            Some("26000") => assert!(failure.message.contains("does not exist"), "{failure:?}"),
            other => panic!("unexpected failure {other:?}: {failure:?}"),
        }
    }
}

/// Runs `pattern` with the default workload (15 clients x 200 queries)
/// against the test's pooled endpoint.
pub async fn run_default_workload(
    pattern: pgbouncer_fixtures::probes::SqlxPattern,
    db: &TestDb,
) -> pgbouncer_fixtures::probes::Outcome {
    let workload = pgbouncer_fixtures::probes::Workload::default();
    pgbouncer_fixtures::probes::run_pattern(pattern, &db.connect_options(), workload)
        .await
        .expect("the workload runs")
}

/// Where the crate keeps its lock files: `$TMPDIR/pgbouncer-fixtures-<uid>`.
pub fn lock_dir() -> std::path::PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("pgbouncer-fixtures-{uid}"))
}

/// Runs `setup` on client A, makes client B take the server connection A
/// used (a transaction), then runs `check` on A and returns its result.
pub async fn across_transactions<T>(
    db: &TestDb,
    setup: &str,
    check: impl AsyncFnOnce(&mut PgConnection) -> T,
) -> T {
    let mut a = db.connect().await.unwrap();
    let mut b = db.connect().await.unwrap();
    sqlx::raw_sql(audited(setup)).execute(&mut a).await.unwrap();
    hold_server_connection(&mut b).await;
    let result = check(&mut a).await;
    release_server_connection(&mut b).await;
    result
}

/// A database of its own behind `profile`, on the crate's stack.
pub async fn db_behind(profile: Profile) -> TestDb {
    TestDb::for_profile(profile).await.unwrap()
}

/// Opens a transaction on `client`: behind a transaction pooler it keeps
/// the server connection it got (the one another client released last:
/// PgBouncer hands out the most recent first) until
/// [`release_server_connection`], so that other client's next transaction
/// runs elsewhere (or waits, with a pool of one).
pub async fn hold_server_connection(client: &mut PgConnection) {
    sqlx::raw_sql("begin; select 1")
        .execute(client)
        .await
        .unwrap();
}

/// Commits the transaction [`hold_server_connection`] opened.
pub async fn release_server_connection(client: &mut PgConnection) {
    sqlx::raw_sql("commit").execute(client).await.unwrap();
}

/// The tests' Supabase project folder (tests/fixtures/supabase-project).
pub fn supabase_project_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/supabase-project")
}

/// A template that applies the tests' Supabase project.
pub fn supabase_project_template() -> Template {
    Template::new().supabase_project(supabase_project_dir())
}

/// A builder of databases with the tests' Supabase project applied.
pub fn supabase_project_builder() -> TestDbBuilder {
    TestDb::builder().template(supabase_project_template())
}

/// Runs `sql` ($1 = `arg`) through the pooler as `who`, in a transaction
/// that is rolled back, and returns the SQLSTATE and message it was
/// refused with (a statement that succeeds, or fails without a database
/// error, fails the test).
pub async fn refused_as(
    db: &TestDb,
    who: &ActAs,
    sql: &'static str,
    arg: &str,
) -> (String, String) {
    let mut conn = db.connect().await.unwrap();
    let mut tx = who.begin(&mut conn).await.unwrap();
    let err = sqlx::query(sql)
        .bind(arg)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .expect_err(sql);
    tx.rollback().await.unwrap();
    let db_err = err.as_database_error().expect("a database error");
    (
        db_err.code().unwrap_or_default().to_string(),
        db_err.message().to_string(),
    )
}
