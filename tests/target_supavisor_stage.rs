//! `Profile::SupabaseSharedPrepared`: Supavisor with its per-tenant
//! `named_prepared_statements` flag on, reproduced by the crate's own
//! Supavisor-like stage in front of PgBouncer with prepared-statement
//! tracking. Real PostgreSQL, real PgBouncer, real sqlx: sqlx's default
//! statement cache works, and Supavisor's four flag-on errors end the
//! connection with its SQLSTATEs, severity and words; and the stage's
//! other Supavisor rules: TLS, the startup parameters, a wrong password.

mod common;

use std::time::Duration;

use common::{audited, run_default_workload};
use pgbouncer_fixtures::probes::prepared::{run_prepared_probe, PreparedProbe};
use pgbouncer_fixtures::probes::{Outcome, SqlxPattern};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Profile, TestDb};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection, Row};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn probe(db: &TestDb, p: PreparedProbe) -> Outcome {
    run_prepared_probe(p, db.db_url(), &db.connect_options(), TIMEOUT)
        .await
        .expect("the probe runs")
}

/// The one failure of a single-client probe: (SQLSTATE, message).
fn failure(o: &Outcome) -> (String, String) {
    assert!(o.wrong.is_empty(), "{o:?}");
    let f = o
        .failures
        .first()
        .unwrap_or_else(|| panic!("no failure: {o:?}"));
    (f.code.clone().unwrap_or_default(), f.message.clone())
}

#[tokio::test]
async fn the_flag_on_errors_are_supavisors_and_end_the_connection() {
    let db = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .unwrap();
    let expected = [
        (
            PreparedProbe::SqlPrepareInTransaction,
            "XX000",
            "(EPSSIMPLEQUERY) transaction mode only supports prepared statements using the \
             Extended Query Protocol",
        ),
        (
            PreparedProbe::ManyNamedStatements,
            "XX000",
            "(EMAXPREPARED) max prepared statements limit reached. Limit: 100 per connection",
        ),
        (
            PreparedProbe::DuplicateName,
            "42P05",
            "(EPREPAREDDUP) prepared statement \"pgbf_probe_stmt\" already exists",
        ),
        (
            PreparedProbe::UnknownName,
            "26000",
            "(EPREPAREDNOTFOUND) prepared statement \"pgbf_probe_never_prepared\" does not exist",
        ),
    ];
    for (p, code, message) in expected {
        let o = probe(&db, p).await;
        let (got_code, got_message) = failure(&o);
        assert_eq!(got_code, code, "{p}");
        // sqlx's probes cannot see the severity (see `run_prepared_probe`).
        let severity = match p {
            PreparedProbe::DuplicateName | PreparedProbe::UnknownName => "FATAL, ",
            _ => "",
        };
        assert_eq!(
            got_message,
            format!("{message} [{severity}connection closed]"),
            "{p}"
        );
    }
}

/// The same probes straight on PostgreSQL: ordinary errors on a connection
/// that stays open, and SQL PREPARE and 101 statements work. The probes
/// tell the two apart, which is what `doctor` reports of an endpoint.
#[tokio::test]
async fn without_the_flag_the_same_probes_get_ordinary_errors() {
    let db = TestDb::for_profile(Profile::NoPooler).await.unwrap();
    for p in [
        PreparedProbe::SqlPrepareInTransaction,
        PreparedProbe::ManyNamedStatements,
    ] {
        let o = probe(&db, p).await;
        assert!(o.passed(), "{p}: {o:?}");
    }
    let (code, message) = failure(&probe(&db, PreparedProbe::DuplicateName).await);
    assert_eq!(code, "42P05");
    assert_eq!(
        message,
        "prepared statement \"pgbf_probe_stmt\" already exists [ERROR, connection kept]"
    );
    let (code, message) = failure(&probe(&db, PreparedProbe::UnknownName).await);
    assert_eq!(code, "26000");
    assert_eq!(
        message,
        "prepared statement \"pgbf_probe_never_prepared\" does not exist [ERROR, connection kept]"
    );
}

/// sqlx's default statement cache, 15 concurrent pooled clients: no false
/// red (Supavisor re-prepares named statements on each backend).
#[tokio::test]
async fn sqlx_default_statement_cache_works_behind_the_flag() {
    let db = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .unwrap();
    for pattern in [
        SqlxPattern::PoolDefaultCache,
        SqlxPattern::SequentialConnects,
    ] {
        let o = run_default_workload(pattern, &db).await;
        assert!(o.passed(), "{pattern:?}: {}", o.summary());
    }
}

/// sqlx's cache holds 100 statements, and prepares a new one before it
/// closes the one it evicts: its 101st distinct statement is a 101st name
/// on Supavisor, which ends the connection. A cache of 99 stays below.
#[tokio::test]
async fn sqlx_default_cache_meets_emaxprepared_at_its_101st_distinct_statement() {
    let db = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .unwrap();
    let distinct = |options: PgConnectOptions, n: i64| async move {
        let mut conn = PgConnection::connect_with(&options).await?;
        for k in 0..n {
            let sql = format!("select $1::int8 + {k}");
            let got: i64 = sqlx::query(audited(&sql))
                .bind(1_i64)
                .fetch_one(&mut conn)
                .await?
                .get(0);
            assert_eq!(got, k + 1);
        }
        conn.close().await
    };
    let default_cache = db.connect_options().statement_cache_capacity(100);
    let e = distinct(default_cache, 101).await.unwrap_err();
    let e = e.as_database_error().expect("Supavisor's error");
    assert_eq!(e.code().as_deref(), Some("XX000"));
    assert!(e.message().starts_with("(EMAXPREPARED)"), "{}", e.message());
    let smaller = db.connect_options().statement_cache_capacity(99);
    distinct(smaller, 150).await.unwrap();
}

/// The stage serves TLS with the stack's certificate (`verify-full` with
/// the stack's CA, as behind PgBouncer: tests/target_profiles.rs), and on a
/// stack that requires TLS it links a TLS client to PgBouncer over TLS,
/// while PgBouncer itself refuses a plain client, as it does without the
/// stage.
#[tokio::test]
async fn the_stage_serves_tls_on_a_stack_that_requires_it() {
    use pgbouncer_fixtures::{StackSettings, Target};
    let db = TestDb::builder()
        .profile(Profile::SupabaseSharedPrepared)
        .target(Target::Containers(
            StackSettings::default().with_require_tls(true),
        ))
        .build()
        .await
        .unwrap();
    let ca = db
        .ca_cert_pem()
        .expect("the stack's CA")
        .as_bytes()
        .to_vec();
    let verified = db
        .connect_options()
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert_from_pem(ca);
    for options in [verified.clone(), db.connect_options()] {
        assert_eq!(common::answers(&options).await.unwrap(), 42);
    }
    let plain = verified.ssl_mode(PgSslMode::Disable);
    let err = PgConnection::connect_with(&plain)
        .await
        .expect_err("a client without TLS is refused");
    let text = err.to_string();
    assert!(
        text.contains("SSL required") || text.contains("no encryption"),
        "{text}"
    );
    db.close().await.unwrap();
}

/// Clients of this test's database in PgBouncer's console (the stage
/// sends every backend Supavisor's own `application_name`).
async fn pgbouncer_clients(db: &TestDb) -> usize {
    let database = db.connect_options().get_database().unwrap().to_string();
    let console = db.connect_options().database("pgbouncer");
    let mut conn = PgConnection::connect_with(&console).await.unwrap();
    let rows = sqlx::raw_sql("show clients")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    rows.iter()
        .filter(|r| r.try_get::<String, _>("database").ok().as_deref() == Some(&database))
        .count()
}

/// Supavisor's startup rules, whatever the flag: only `user`, `database`,
/// `search_path` and `application_name = Supavisor` (`Supavisor - <the
/// client's>` in session mode) reach the database; sqlx's `TimeZone=UTC`,
/// an `IntervalStyle` and a dotted custom setting in `options` are dropped
/// (the database's own defaults apply), where PgBouncer alone applies the
/// first two and refuses the third (08P01). The `search_path` is applied
/// behind the shared and session profiles (the stage links the login
/// straight to PostgreSQL); the flag-on profile's clients stay on
/// PgBouncer, which cannot carry it (its residue says so).
#[rstest::rstest]
#[tokio::test]
async fn only_supavisors_startup_parameters_reach_the_database(
    #[values(
        Profile::SupabaseSharedPrepared,
        Profile::SupabaseShared,
        Profile::SupabaseSession
    )]
    profile: Profile,
) {
    let db = TestDb::for_profile(profile).await.unwrap();
    let mut direct = db.connect_direct().await.unwrap();
    sqlx::raw_sql(audited(
        "do $$ begin \
         execute format('alter database %I set timezone = ''Asia/Tokyo''', current_database()); \
         execute format('alter database %I set intervalstyle = ''iso_8601''', current_database()); \
         end $$",
    ))
    .execute(&mut direct)
    .await
    .unwrap();
    let default_path: String = sqlx::raw_sql("show search_path")
        .fetch_one(&mut direct)
        .await
        .unwrap()
        .get(0);
    let _ = direct.close().await;
    let options = db.connect_options().application_name("my-app").options([
        ("app.tenant", "t1"),
        ("IntervalStyle", "postgres_verbose"),
        ("search_path", "pg_catalog"),
    ]);
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    let row = sqlx::raw_sql(
        "select current_setting('application_name'), \
         (select application_name from pg_stat_activity where pid = pg_backend_pid()), \
         current_setting('TimeZone'), current_setting('IntervalStyle'), \
         coalesce(current_setting('app.tenant', true), 'NULL'), \
         current_setting('search_path')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let got: Vec<String> = (0..6).map(|i| row.get(i)).collect();
    let name = match profile {
        Profile::SupabaseSession => "Supavisor - my-app",
        _ => "Supavisor",
    };
    let path = match profile {
        Profile::SupabaseSharedPrepared => default_path.as_str(),
        _ => "pg_catalog",
    };
    assert_eq!(
        got,
        [name, name, "Asia/Tokyo", "iso_8601", "NULL", path],
        "application_name (setting, pg_stat_activity), TimeZone, IntervalStyle, app.tenant, \
         search_path behind {profile}"
    );
    conn.close().await.unwrap();
    db.close().await.unwrap();
}

/// Supavisor keys its pools by the startup `search_path`, and its session
/// mode refuses client `pool_size + 1` of a pool at once: behind
/// `supabase-session` (pool 15) the sixteenth client naming the same
/// search_path gets FATAL `XX000 (EMAXCONNSESSION)`, while a client of the
/// pool without one still connects, and a seat given up is taken again.
#[tokio::test]
async fn the_session_limit_counts_each_search_path_pool() {
    let db = TestDb::for_profile(Profile::SupabaseSession).await.unwrap();
    let named = db.connect_options().options([("search_path", "public")]);
    let mut open = Vec::new();
    for _ in 0..15 {
        open.push(PgConnection::connect_with(&named).await.unwrap());
    }
    let err = PgConnection::connect_with(&named).await.unwrap_err();
    let e = err.as_database_error().expect("the stage's answer");
    assert_eq!(e.code().as_deref(), Some("XX000"), "{e}");
    assert_eq!(
        e.message(),
        "(EMAXCONNSESSION) max clients reached in session mode - max clients are limited \
         to pool_size: 15"
    );
    assert_eq!(common::answers(&db.connect_options()).await.unwrap(), 42);
    open.pop().unwrap().close().await.unwrap();
    assert_eq!(common::answers(&named).await.unwrap(), 42);
    for conn in open {
        conn.close().await.unwrap();
    }
    db.close().await.unwrap();
}

/// Every connection through the stage, closed by the client or ended by a
/// refusal, leaves PgBouncer's client list.
#[tokio::test]
async fn the_stage_leaks_no_connection() {
    let db = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .unwrap();
    let options = db.connect_options();
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(PgConnection::connect_with(&options).await.unwrap());
    }
    assert_eq!(pgbouncer_clients(&db).await, 4);
    let mut refused = open.pop().unwrap();
    let e = sqlx::raw_sql("prepare p as select 1")
        .execute(&mut refused)
        .await
        .unwrap_err();
    assert_eq!(
        e.as_database_error().unwrap().code().as_deref(),
        Some("XX000")
    );
    for conn in open {
        conn.close().await.unwrap();
    }
    drop(refused);
    // The stage closes its side as each link ends; PgBouncer sees it soon after.
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = pgbouncer_clients(&db).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left, 0,
        "connections through the stage left open in PgBouncer"
    );
}

/// With the cache off, sqlx still names every statement and closes none:
/// the connection's 101st query is a 101st name, and Supavisor ends it.
#[tokio::test]
async fn statement_cache_off_ends_a_connection_at_its_101st_query() {
    let db = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .unwrap();
    let mut conn = db.connect().await.unwrap();
    for k in 0..100_i64 {
        let got: i64 = sqlx::query("select $1::int8 + 1")
            .bind(k)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, k + 1);
    }
    let e = sqlx::query("select $1::int8 + 1")
        .bind(0_i64)
        .fetch_one(&mut conn)
        .await
        .unwrap_err();
    let e = e.as_database_error().expect("Supavisor's error");
    assert_eq!(e.code().as_deref(), Some("XX000"));
    assert_eq!(
        e.message(),
        "(EMAXPREPARED) max prepared statements limit reached. Limit: 100 per connection"
    );
    assert!(conn.ping().await.is_err(), "the connection is closed");
}

/// `doctor` against the profile's URL says the flag is on; on PostgreSQL
/// itself, that it is off.
#[tokio::test]
async fn doctor_says_whether_the_flag_is_on() {
    use pgbouncer_fixtures::doctor::{diagnose, items, Verdict};
    use pgbouncer_fixtures::probes::Workload;
    let workload = Workload {
        clients: 2,
        rounds: 10,
    };
    for (profile, verdict, starts) in [
        (Profile::SupabaseSharedPrepared, Verdict::Hazard, "on: "),
        (Profile::NoPooler, Verdict::Ok, "off "),
    ] {
        let db = TestDb::for_profile(profile).await.unwrap();
        let report = diagnose(db.db_url(), workload, TIMEOUT).await;
        let f = report
            .finding(items::NAMED_PREPARED_FLAG)
            .unwrap_or_else(|| panic!("{}", report.to_text()));
        assert_eq!(f.verdict, verdict, "{profile}: {}", report.to_text());
        assert!(f.detail.starts_with(starts), "{profile}: {}", f.detail);
    }
}

/// A CancelRequest through the stage reaches PgBouncer, which cancels the
/// query on its server connection (tokio-postgres sends it to the host and
/// port it connected to: the stage's). Behind `supabase-shared` the query
/// runs on another client's login (the link released last: B's), so the
/// stage's key must reach that link, not the one the client logged in on.
///
/// A client naming a `search_path` runs on a link straight to PostgreSQL
/// (behind `supabase-shared` and `supabase-session`): its cancel goes there.
#[cfg(feature = "tokio-postgres")]
#[rstest::rstest]
#[tokio::test]
async fn a_cancel_request_passes_through_the_stage(
    #[values(
        Profile::SupabaseSharedPrepared,
        Profile::SupabaseShared,
        Profile::SupabaseSession
    )]
    profile: Profile,
    #[values(false, true)] search_path: bool,
) {
    use pgbouncer_fixtures::tokio_postgres::{Config, NoTls};
    let db = TestDb::for_profile(profile).await.unwrap();
    let connect = || async {
        let mut config: Config = db.url().parse().unwrap();
        if search_path {
            config.options("-c search_path=public");
        }
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    };
    let client = connect().await;
    let other = connect().await;
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
    // Cancel once PostgreSQL runs the query (a cancel that comes earlier
    // finds nothing to cancel).
    let mut direct = db.connect_direct().await.unwrap();
    for _ in 0..200 {
        let running: i64 = sqlx::raw_sql(
            "select count(*) from pg_stat_activity \
             where state = 'active' and query = 'select pg_sleep(60)'",
        )
        .fetch_one(&mut direct)
        .await
        .unwrap()
        .get(0);
        if running > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = direct.close().await;
    token.cancel_query(NoTls).await.unwrap();
    let e = sleeping.await.unwrap().unwrap_err();
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("57014"),
        "canceled by the server: {e:?}"
    );
    // The other client is served as before.
    let rows = other.simple_query("select 1").await.unwrap();
    assert!(rows.iter().any(|m| matches!(
        m,
        pgbouncer_fixtures::tokio_postgres::SimpleQueryMessage::Row(_)
    )));
}

/// A wrong password through the stage: Supavisor's answer, FATAL `28P01`
/// `password authentication failed for user "<user>"`, comes after its
/// 500 ms delay (a lower bound: the stage waits before it writes); the
/// stage serves the next client as before.
#[tokio::test]
async fn a_wrong_password_is_answered_as_supavisor_does() {
    let db = TestDb::for_profile(Profile::SupabaseSharedPrepared)
        .await
        .unwrap();
    let wrong = db.connect_options().password("not-the-password");
    let started = std::time::Instant::now();
    let err = PgConnection::connect_with(&wrong).await.unwrap_err();
    let waited = started.elapsed();
    let e = err.as_database_error().expect("the server's answer");
    assert_eq!(e.code().as_deref(), Some("28P01"), "{e}");
    assert_eq!(
        e.message(),
        "password authentication failed for user \"postgres\""
    );
    assert!(
        waited >= Duration::from_millis(500),
        "answered after {waited:?}"
    );
    assert_eq!(common::answers(&db.connect_options()).await.unwrap(), 42);
    db.close().await.unwrap();
}
