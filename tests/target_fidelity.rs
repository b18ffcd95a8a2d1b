//! The seeds' failures, reproduced on purpose: each profile behaves like the
//! production it stands for, and each test asserts the exact SQLSTATE or message.

mod common;

use common::{
    across_transactions, assert_named_statement_collisions, audited, db_behind,
    run_default_workload,
};

use std::time::Duration;

use pgbouncer_fixtures::probes::startup::{send_startup, StartupAnswer};
use pgbouncer_fixtures::probes::SqlxPattern;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Profile, StackSettings, Target, TestDb};
use rstest::rstest;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};

fn code_of(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.to_string())
}

/// Seed 1: sqlx's default statement cache, concurrent clients.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_statement_cache_collides_only_behind_the_default_profile(
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseDedicated,
        Profile::SupabaseSession,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = db_behind(profile).await;
    let outcome = run_default_workload(SqlxPattern::PoolDefaultCache, &db).await;
    if profile == Profile::SupabaseShared {
        assert_named_statement_collisions(&outcome);
    } else {
        assert!(outcome.passed(), "{profile}: {}", outcome.summary());
    }
}

/// Seed 2 (seed 001's "unreliable workaround", proven for sqlx): one
/// connection per client with `statement_cache_capacity(0)` still fails.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_zero_still_fails_behind_the_default_profile(
    #[values(Profile::SupabaseShared, Profile::SupabaseDedicated)] profile: Profile,
) {
    let db = db_behind(profile).await;
    let outcome = run_default_workload(SqlxPattern::ConnectionCacheOff, &db).await;
    if profile == Profile::SupabaseShared {
        assert!(!outcome.passed());
        assert!(
            outcome.codes().iter().all(|c| c == "42P05" || c == "26000"),
            "{}",
            outcome.summary()
        );
    } else {
        assert!(
            outcome.passed(),
            "tracking makes named statements safe: {}",
            outcome.summary()
        );
    }
}

/// Seed 3: unnamed statements are safe only inside an explicit transaction.
/// Outside one, Parse and Bind go out in two round trips and can meet
/// different server connections: an error, or worse, another client's
/// unnamed statement and a wrong answer. Never silent success, run after run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_break_outside_a_transaction_only() {
    let db = db_behind(Profile::SupabaseShared).await;
    for run in 0..3 {
        let outside = run_default_workload(SqlxPattern::UnnamedOutsideTransaction, &db).await;
        assert!(
            !outside.passed(),
            "run {run}: errors or wrong answers, never silent success"
        );
        for f in &outside.failures {
            assert_eq!(f.code.as_deref(), Some("26000"), "run {run}: {f:?}");
            assert_eq!(f.message, "unnamed prepared statement does not exist");
        }
    }
    let inside = run_default_workload(SqlxPattern::UnnamedInsideTransaction, &db).await;
    assert!(inside.passed(), "{}", inside.summary());
}

/// The seeds' `jit` recipes, as each endpoint treats them: Supavisor (the
/// shared pooler, and its session mode) accepts and drops them, Supabase's
/// dedicated PgBouncer refuses what it does not know, PostgreSQL applies
/// them. (`search_path`, which Supavisor applies, is the next test's.)
#[rstest]
#[case::top_level_jit(Recipe::TopLevel("jit", "off"), "unsupported startup parameter: jit")]
#[case::options_jit(
    Recipe::Options("jit", "off"),
    "unsupported startup parameter in options: jit"
)]
#[tokio::test]
async fn the_seeds_startup_parameters_behave_as_on_each_endpoint(
    #[case] recipe: Recipe,
    #[case] refusal: &str,
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseSession,
        Profile::SupabaseDedicated,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = db_behind(profile).await;
    let refused = profile == Profile::SupabaseDedicated;
    match recipe {
        Recipe::TopLevel(name, value) => {
            // What asyncpg's server_settings sends: a parameter of its own in
            // the StartupMessage (sqlx cannot send one).
            let answer = send_startup(&db.connect_options(), &[(name, value)])
                .await
                .unwrap();
            match answer {
                StartupAnswer::Accepted => assert!(!refused, "{profile} accepted {name}"),
                StartupAnswer::Refused(e) => {
                    assert!(refused, "{profile} refused {name}: {e}");
                    assert_eq!(e.code.as_deref(), Some("08P01"));
                    assert_eq!(e.message, refusal);
                }
            }
        }
        Recipe::Options(name, value) => {
            let options = db.connect_options().options([(name, value)]);
            match PgConnection::connect_with(&options).await {
                Ok(mut conn) => {
                    assert!(!refused, "{profile} accepted options -c {name}");
                    let applied: String = sqlx::raw_sql(audited(&format!("show {name}")))
                        .fetch_one(&mut conn)
                        .await
                        .unwrap()
                        .get(0);
                    // Only PostgreSQL itself applies it; the Supavisor-like
                    // profiles drop it, as Supavisor does.
                    assert_eq!(
                        applied == value,
                        profile == Profile::NoPooler,
                        "{name}={applied}"
                    );
                }
                Err(err) => {
                    assert!(refused, "{profile} refused options -c {name}: {err}");
                    assert_eq!(code_of(&err).as_deref(), Some("08P01"));
                    assert!(err.to_string().contains(refusal), "{err}");
                }
            }
        }
    }
}

/// `options=-c search_path=app,public` (sqlx `.options()`, asyncpg
/// `server_settings`), checked by what an unqualified name resolves to: the
/// same table name in `app` and `public`, each with its own row. PostgreSQL
/// resolves it in `app`, and so does Supavisor (it applies a startup
/// search_path since 2.8.9, in pools keyed by it): behind the shared and
/// session profiles the stage links such a login straight to PostgreSQL.
/// Behind the flag-on profile it resolves in `public`: **not reproduced**
/// (its clients stay on PgBouncer, and PostgreSQL before 18 does not
/// report search_path, so PgBouncer cannot carry it), and it says so in
/// its residue and in the fidelity table. The dedicated pooler refuses it,
/// as Supabase's PgBouncer (`ignore_startup_parameters = extra_float_digits`).
#[rstest]
#[tokio::test]
async fn startup_search_path_resolves_names_as_on_each_endpoint(
    #[values(
        Profile::SupabaseShared,
        Profile::SupabaseSession,
        Profile::SupabaseSharedPrepared,
        Profile::SupabaseDedicated,
        Profile::NoPooler
    )]
    profile: Profile,
) {
    let db = db_behind(profile).await;
    let mut admin = db.connect_direct().await.unwrap();
    sqlx::raw_sql(
        "create schema app; \
         create table app.notes as select 'app'::text as origin; \
         create table public.notes as select 'public'::text as origin",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let options = db
        .connect_options()
        .options([("search_path", "app,public")]);
    let not_reproduced = pgbouncer_fixtures::not_reproduced(
        pgbouncer_fixtures::Behaviour::Startup(
            pgbouncer_fixtures::probes::startup::StartupProbe::OptionsSearchPath,
        ),
        profile,
    );
    match PgConnection::connect_with(&options).await {
        Ok(mut conn) => {
            // Twice: the second transaction may run on another link.
            for _ in 0..2 {
                let origin: String = sqlx::raw_sql("select origin from notes")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get(0);
                if profile == Profile::SupabaseSharedPrepared {
                    // Supavisor answers "app"; this profile does not.
                    assert_eq!(origin, "public", "{profile}");
                    assert!(not_reproduced.is_some_and(|r| r.contains("search_path")));
                    assert!(
                        profile
                            .residue()
                            .iter()
                            .any(|r| r.starts_with("not reproduced: search_path at startup")),
                        "{profile}"
                    );
                } else {
                    assert_eq!(origin, "app", "{profile}");
                    assert_eq!(not_reproduced, None, "{profile}");
                }
            }
            conn.close().await.unwrap();
        }
        Err(err) => {
            assert_eq!(profile, Profile::SupabaseDedicated, "{err}");
            assert_eq!(code_of(&err).as_deref(), Some("08P01"));
            assert!(
                err.to_string()
                    .contains("unsupported startup parameter in options: search_path"),
                "{err}"
            );
        }
    }
    db.close().await.unwrap();
}

/// A startup-parameter recipe of the seeds.
#[derive(Clone, Copy, Debug)]
enum Recipe {
    /// A parameter of its own in the StartupMessage.
    TopLevel(&'static str, &'static str),
    /// `-c name=value` in the `options` parameter.
    Options(&'static str, &'static str),
}

/// Seed 4, continued: sqlx sends `extra_float_digits` by default; a strict
/// PgBouncer (its own default: nothing ignored) refuses that login, while the
/// factory's connections are accepted.
#[tokio::test]
async fn the_factory_sends_no_parameter_a_strict_pooler_refuses() {
    let strict = Target::Containers(
        StackSettings::default().with_ignore_startup_parameters(Vec::<String>::new()),
    );
    let db = TestDb::builder().target(strict).build().await.unwrap();
    let sqlx_defaults: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let err = PgConnection::connect_with(&sqlx_defaults)
        .await
        .expect_err("refused");
    assert_eq!(code_of(&err).as_deref(), Some("08P01"));
    assert!(
        err.to_string()
            .contains("unsupported startup parameter: extra_float_digits"),
        "{err}"
    );

    let mut conn = db
        .connect()
        .await
        .expect("connect() sends only parameters PgBouncer accepts");
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
}

/// Seed 5: session state is lost in transaction mode and kept in session mode.
#[rstest]
#[tokio::test]
async fn session_state_survives_only_session_pooling(
    #[values(Profile::SupabaseShared, Profile::SupabaseSession)] profile: Profile,
) {
    let db = db_behind(profile).await;
    let kept = profile == Profile::SupabaseSession;

    let set = across_transactions(
        &db,
        "set pgbf.marker = 'a'",
        async |a: &mut PgConnection| {
            sqlx::raw_sql("select current_setting('pgbf.marker', true)")
                .fetch_one(a)
                .await
                .unwrap()
                .get::<Option<String>, _>(0)
        },
    )
    .await;
    assert_eq!(set.as_deref() == Some("a"), kept, "SET: {set:?}");

    let unlocked = across_transactions(
        &db,
        "select pg_advisory_lock(4242)",
        async |a: &mut PgConnection| {
            sqlx::raw_sql("select pg_advisory_unlock(4242)")
                .fetch_one(a)
                .await
                .unwrap()
                .get::<bool, _>(0)
        },
    )
    .await;
    assert_eq!(
        unlocked, kept,
        "a session advisory lock stays on the server connection that took it"
    );

    // SQL-level PREPARE and temp tables live in the server session too.
    for (setup, check, sqlstate_when_lost) in [
        ("prepare pgbf_q as select 1", "execute pgbf_q", "26000"),
        (
            "create temp table pgbf_tmp (x int)",
            "select count(*) from pgbf_tmp",
            "42P01",
        ),
    ] {
        let met = across_transactions(&db, setup, async |a: &mut PgConnection| {
            let result = sqlx::raw_sql(check).execute(a).await;
            result
                .err()
                .map(|e| code_of(&e).unwrap_or_else(|| e.to_string()))
        })
        .await;
        assert_eq!(
            met,
            (!kept).then(|| sqlstate_when_lost.to_string()),
            "{setup} then {check}"
        );
    }

    // LISTEN: the notification goes to the server connection, not to the client.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("pgbf_channel").await.unwrap();
    let mut b = db.connect().await.unwrap();
    common::hold_server_connection(&mut b).await;
    let mut notifier = db.connect_direct().await.unwrap();
    sqlx::raw_sql("notify pgbf_channel, 'hello'")
        .execute(&mut notifier)
        .await
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await;
    let b_commit = sqlx::raw_sql("commit").execute(&mut b).await;
    if kept {
        b_commit.unwrap();
    } else {
        // Worse than lost: PgBouncer delivered A's notification to B, which
        // now holds that server connection; sqlx rejects the stray message.
        let err = b_commit.expect_err("B received A's notification");
        assert!(err.to_string().contains("NotificationResponse"), "{err}");
    }
    match received {
        Ok(Ok(n)) => assert!(kept, "LISTEN worked behind {profile}: {}", n.payload()),
        Ok(Err(e)) => panic!("listener failed: {e}"),
        Err(_) => assert!(!kept, "LISTEN lost behind {profile}"),
    }
}

fn migrations_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_accounts.sql"),
        "create table accounts (id bigint primary key, name text not null);",
    )
    .unwrap();
    std::fs::write(dir.path().join("0002_orders.sql"), "create table orders (id bigint primary key, account_id bigint references accounts(id));\ncreate index on orders (account_id);").unwrap();
    dir
}

/// Seed 6: migrations through the transaction pooler. sqlx's migrator takes a
/// session advisory lock and releases it in a later statement: behind the
/// pooler the release can land on another server connection, the lock stays
/// held by a pooled server connection, and every later migration run blocks.
/// Through the direct endpoint the same sequence is safe.
#[tokio::test]
async fn migrations_belong_on_the_direct_endpoint() {
    let db = db_behind(Profile::SupabaseShared).await;
    let dir = migrations_dir();
    let migrator = Migrator::new(dir.path()).await.unwrap();

    // The migrator's lock/unlock pair through the pooler, with another client busy in between.
    let mut m = db.connect().await.unwrap();
    let mut busy = db.connect().await.unwrap();
    m.lock().await.unwrap();
    common::hold_server_connection(&mut busy).await;
    m.unlock()
        .await
        .expect("sqlx does not notice that the unlock missed");
    common::release_server_connection(&mut busy).await;
    drop((m, busy));

    // The lock is still held by a pooled server connection: the next run hangs.
    let mut direct = db.connect_direct().await.unwrap();
    let blocked = tokio::time::timeout(Duration::from_secs(3), migrator.run(&mut direct)).await;
    assert!(
        blocked.is_err(),
        "the migration blocks on an advisory lock nobody will release"
    );
    drop(direct);

    // Release it (end the server session holding it), then migrate the documented way.
    let mut admin = db.connect_direct().await.unwrap();
    sqlx::raw_sql(
        "select pg_terminate_backend(pid) from pg_locks where locktype = 'advisory' \
         and database = (select oid from pg_database where datname = current_database()) \
         and pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let mut direct = db.connect_direct().await.unwrap();
    direct.lock().await.unwrap();
    direct.unlock().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), migrator.run(&mut direct))
        .await
        .expect("not blocked")
        .expect("migrations apply through the direct endpoint");
    let applied: i64 = sqlx::raw_sql("select count(*) from _sqlx_migrations")
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 2);
}

/// Supavisor's session mode refuses client `pool_size + 1` at once (default
/// pool 15): a `PgPool` of 20 that passes against a plain session pooler
/// fails on Supabase. The session profile refuses client 16 at once too,
/// in Supavisor's words (the stage's, for PgBouncer's client cap): FATAL
/// `XX000 (EMAXCONNSESSION) max clients reached in session mode`.
#[tokio::test]
async fn session_mode_refuses_the_client_after_the_pool_size_at_once() {
    let db = db_behind(Profile::SupabaseSession).await;
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(db.connect().await.unwrap());
    }
    let err = db
        .connect()
        .await
        .expect_err("client 16 of a session pool of 15 is refused");
    // Refused by the pooler (not a connect timeout after waiting in a queue).
    match &err {
        pgbouncer_fixtures::Error::ConnectRefused { reason, code, .. } => {
            assert_eq!(
                reason,
                "(EMAXCONNSESSION) max clients reached in session mode - max clients are \
                 limited to pool_size: 15",
                "{err}"
            );
            assert_eq!(code.as_deref(), Some("XX000"), "{err}");
        }
        other => panic!("expected the pooler's refusal, got {other}"),
    }
    // A client that leaves frees its place.
    drop(held.pop());
    let started = std::time::Instant::now();
    let mut again = loop {
        match db.connect().await {
            Ok(conn) => break conn,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    sqlx::raw_sql("select 1").execute(&mut again).await.unwrap();
    drop(again);
    drop(held);
    db.close().await.unwrap();
}
