//! Failure explanations: a test that fails because of the pooler prints, at
//! that test, what the servers reported, why it happens behind its profile
//! and what to change; a test that passes prints nothing extra.
//!
//! Each scenario is an `#[ignore]`d test of this binary that fails on
//! purpose; the real tests run it in a child process (`--ignored --exact`)
//! and read its stderr. Children of one test share a stack through
//! `PGBF_RUN_ID`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{audited, password_of};
use pgbouncer_fixtures::hazard::Hazard;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Profile, StackSettings, Target, TestDb};
use sqlx::migrate::Migrate;
use sqlx::{Connection, PgConnection, Row};

const CHILD: &str = "PGBF_EXPLAIN_CHILD";
const BLOCK: &str = "pgbouncer-fixtures: what the servers reported for";

/// Runs scenario `name` behind `profile` in a child process; returns whether
/// it passed, and its stderr.
fn run_child(name: &str, profile: Profile, run_id: &str) -> (bool, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("PGBF_PROFILE", profile.name())
        .env("PGBF_RUN_ID", run_id)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same stack the children use, to learn its password.
async fn parent_db(profile: Profile, run_id: &str) -> TestDb {
    let settings = profile.apply(StackSettings::default().with_run_id(run_id));
    TestDb::builder()
        .target(Target::Containers(settings))
        .test_name("explain_parent")
        .build()
        .await
        .unwrap()
}

/// Asserts that `scenario` fails behind `profile`, and that its stderr holds
/// one explanation block naming `hazard`, the profile, the server's words and
/// the remedies, and no password.
async fn assert_explained(scenario: &str, profile: Profile, hazard: Hazard, words: &str) {
    let run_id = common::unique_run_id("explain");
    let parent = parent_db(profile, &run_id).await;
    let (passed, stderr) = {
        let (s, r) = (scenario.to_string(), run_id.clone());
        tokio::task::spawn_blocking(move || run_child(&s, profile, &r))
            .await
            .unwrap()
    };
    assert!(!passed, "{scenario} fails behind {profile}: {stderr}");
    assert_eq!(stderr.matches(BLOCK).count(), 1, "printed once: {stderr}");
    let block = &stderr[stderr.find(BLOCK).unwrap()..];
    assert!(block.contains(hazard.title()), "names the hazard: {block}");
    assert!(block.contains(words), "quotes the server: {block}");
    assert!(
        block.contains(&format!(
            "the {profile} profile, which mirrors {}",
            profile.mirrors()
        )),
        "names the profile and what it mirrors: {block}"
    );
    // What the profile does not reproduce of its endpoint, by name.
    for line in profile
        .residue()
        .iter()
        .filter(|r| r.starts_with("not reproduced:"))
    {
        assert!(block.contains(line), "names {line:?}: {block}");
    }
    for remedy in hazard.remedies() {
        assert!(block.contains(remedy), "remedy {remedy:?}: {block}");
    }
    assert!(!stderr.contains(&password_of(parent.url())), "no password");
    parent.close().await.unwrap();
}

/// Skips a scenario unless a parent test started it.
fn child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// A scenario's database in the child process; None in an ordinary run,
/// where the scenario returns at once.
async fn scenario_db() -> Option<TestDb> {
    match child() {
        true => Some(TestDb::new().await.unwrap()),
        false => None,
    }
}

// ---- the scenarios: each fails on purpose (when run as a child) ----

#[ignore = "a scenario: run by connect_twice_* in a child process"]
#[tokio::test]
async fn scenario_connect_twice() {
    let Some(db) = scenario_db().await else {
        return;
    };
    for _ in 0..2 {
        let mut conn = db.connect().await.unwrap();
        let n: i64 = sqlx::query_scalar("select $1::int8 + 1")
            .bind(1_i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 2);
    }
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_default_cache_across_transactions() {
    let Some(db) = scenario_db().await else {
        return;
    };
    let mut a = PgConnection::connect_with(&db.connect_options().statement_cache_capacity(100))
        .await
        .unwrap();
    let mut b = db.connect().await.unwrap();
    let _: i64 = sqlx::query_scalar("select $1::int8")
        .bind(1_i64)
        .fetch_one(&mut a)
        .await
        .unwrap();
    // B holds the server connection where A's cached sqlx_s_1 lives.
    common::hold_server_connection(&mut b).await;
    let _: i64 = sqlx::query_scalar("select $1::int8")
        .bind(2_i64)
        .fetch_one(&mut a)
        .await
        .unwrap();
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_unnamed_outside_a_transaction() {
    if !child() {
        return;
    }
    // One server connection: B holds it, A's Parse waits, C's simple query
    // queues behind it and runs between A's Parse and A's Bind, replacing
    // A's unnamed statement.
    let settings = StackSettings::from_env(&pgbouncer_fixtures::Env::load().unwrap())
        .unwrap()
        .with_default_pool_size(1);
    let db = TestDb::builder()
        .target(Target::Containers(settings))
        .build()
        .await
        .unwrap();
    let mut a = db.connect().await.unwrap();
    let mut b = db.connect().await.unwrap();
    let mut c = db.connect().await.unwrap();
    common::hold_server_connection(&mut b).await;
    let a_query = tokio::spawn(async move {
        sqlx::query_scalar::<_, i64>("select $1::int8 + 1")
            .bind(1_i64)
            .persistent(false)
            .fetch_one(&mut a)
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A query without arguments goes out as a simple Query message.
    let c_query = tokio::spawn(async move { sqlx::Executor::execute(&mut c, "select 2").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    common::release_server_connection(&mut b).await;
    c_query.await.unwrap().unwrap();
    let answer = a_query.await.unwrap().unwrap();
    assert_eq!(answer, 2);
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_startup_parameter() {
    let Some(db) = scenario_db().await else {
        return;
    };
    PgConnection::connect_with(&db.connect_options().options([("jit", "off")]))
        .await
        .unwrap();
}

/// A sets up, B takes A's server connection (an open transaction), A runs
/// `check` (simple protocol) and gets its first column as text. B commits
/// before the result is returned: a server connection whose client leaves
/// mid-transaction is closed, and with it what A left there.
async fn across(db: &TestDb, setup: &str, check: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = format!("select ({check})::text");
    common::across_transactions(db, setup, async |a: &mut PgConnection| {
        let rows = sqlx::raw_sql(audited(&sql)).fetch_all(a).await?;
        Ok(rows.first().and_then(|r| r.get::<Option<String>, _>(0)))
    })
    .await
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_advisory_unlock() {
    let Some(db) = scenario_db().await else {
        return;
    };
    let unlocked = across(
        &db,
        "select pg_advisory_lock(77)",
        "select pg_advisory_unlock(77)",
    )
    .await
    .unwrap();
    assert_eq!(unlocked.as_deref(), Some("true"), "the lock was released");
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_sql_execute() {
    let Some(db) = scenario_db().await else {
        return;
    };
    let mut a = db.connect().await.unwrap();
    let mut b = db.connect().await.unwrap();
    sqlx::raw_sql("prepare my_query as select true")
        .execute(&mut a)
        .await
        .unwrap();
    common::hold_server_connection(&mut b).await;
    let executed = sqlx::raw_sql("execute my_query").execute(&mut a).await;
    common::release_server_connection(&mut b).await;
    executed.unwrap();
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_temp_table() {
    let Some(db) = scenario_db().await else {
        return;
    };
    // The table stays on the server connection B then holds.
    across(
        &db,
        "create temp table scratch (x int)",
        "select count(*) from scratch",
    )
    .await
    .unwrap();
}

#[ignore = "a scenario: run by a parent test in a child process"]
#[tokio::test]
async fn scenario_migrator_lock() {
    let Some(db) = scenario_db().await else {
        return;
    };
    let mut m = db.connect().await.unwrap();
    let mut busy = db.connect().await.unwrap();
    m.lock().await.unwrap();
    common::hold_server_connection(&mut busy).await;
    m.unlock().await.unwrap();
    common::release_server_connection(&mut busy).await;
    // The next migration run waits for the lock a pooled server connection kept.
    let mut next = db.connect_direct().await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), next.lock())
        .await
        .expect("the migrator's lock is free")
        .unwrap();
}

// ---- the tests ----

#[tokio::test]
async fn connect_twice_fails_behind_the_shared_pooler_and_says_why() {
    assert_explained(
        "scenario_connect_twice",
        Profile::SupabaseShared,
        Hazard::DuplicateStatement,
        "42P05 prepared statement \"sqlx_s_1\" already exists",
    )
    .await;
}

#[tokio::test]
async fn connect_twice_passes_silently_behind_tracking_and_session_poolers() {
    for profile in [Profile::SupabaseDedicated, Profile::SupabaseSession] {
        let run_id = common::unique_run_id("explain-pass");
        let (passed, stderr) = tokio::task::spawn_blocking(move || {
            run_child("scenario_connect_twice", profile, &run_id)
        })
        .await
        .unwrap();
        assert!(passed, "{profile}: {stderr}");
        assert!(
            !stderr.contains(BLOCK),
            "nothing extra behind {profile}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_cached_statement_missing_on_another_server_connection_is_explained() {
    assert_explained(
        "scenario_default_cache_across_transactions",
        Profile::SupabaseShared,
        Hazard::MissingStatement,
        "26000 prepared statement \"sqlx_s_1\" does not exist",
    )
    .await;
}

#[tokio::test]
async fn an_unnamed_statement_split_across_server_connections_is_explained() {
    assert_explained(
        "scenario_unnamed_outside_a_transaction",
        Profile::SupabaseDedicated,
        Hazard::MissingUnnamedStatement,
        "26000 unnamed prepared statement does not exist",
    )
    .await;
}

#[tokio::test]
async fn a_refused_startup_parameter_is_explained() {
    assert_explained(
        "scenario_startup_parameter",
        Profile::SupabaseDedicated,
        Hazard::StartupParameterRefused,
        "08P01 unsupported startup parameter in options: jit",
    )
    .await;
}

#[tokio::test]
async fn an_advisory_unlock_on_another_server_session_is_explained() {
    assert_explained(
        "scenario_advisory_unlock",
        Profile::SupabaseShared,
        Hazard::AdvisoryUnlockMissed,
        "you don't own a lock of type ExclusiveLock",
    )
    .await;
}

#[tokio::test]
async fn an_execute_of_a_lost_sql_prepare_is_explained() {
    assert_explained(
        "scenario_sql_execute",
        Profile::SupabaseShared,
        Hazard::SqlPrepareLost,
        "26000 prepared statement \"my_query\" does not exist",
    )
    .await;
}

#[tokio::test]
async fn a_lost_temporary_table_is_explained() {
    assert_explained(
        "scenario_temp_table",
        Profile::SupabaseShared,
        Hazard::TempTableLost,
        "42P01 relation \"scratch\" does not exist",
    )
    .await;
}

#[tokio::test]
async fn the_migrator_lock_held_through_the_pooler_is_explained() {
    assert_explained(
        "scenario_migrator_lock",
        Profile::SupabaseShared,
        Hazard::AdvisoryLockHeld,
        "still waiting for ExclusiveLock on advisory lock",
    )
    .await;
}

#[tokio::test]
async fn explain_on_demand_is_empty_for_a_clean_test_and_none_for_external_targets() {
    let db = TestDb::for_profile(Profile::SupabaseShared).await.unwrap();
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    let explanation = db.explain().await.unwrap().expect("the crate's stack");
    assert!(explanation.is_empty(), "{explanation}");
    // Something pooler-related, asked for without a panic.
    sqlx::raw_sql("prepare q as select 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut other = db.connect().await.unwrap();
    common::hold_server_connection(&mut other).await;
    let _ = sqlx::raw_sql("execute q").execute(&mut conn).await;
    common::release_server_connection(&mut other).await;
    let explanation = db.explain().await.unwrap().unwrap();
    assert!(explanation.has(Hazard::SqlPrepareLost), "{explanation}");

    let env = pgbouncer_fixtures::Env::from_vars([("TEST_DATABASE_URL", db.url())]);
    let external = TestDb::builder()
        .target(Target::resolve(&env).unwrap())
        .build()
        .await
        .unwrap();
    assert!(external.explain().await.unwrap().is_none());
    external.close().await.unwrap();
    db.close().await.unwrap();
}
