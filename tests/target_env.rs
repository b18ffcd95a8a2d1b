//! `.env` loading and precedence, and the external-target path
//! (`TEST_DATABASE_URL`): no container started, nothing dropped that the
//! crate did not create.

mod common;

use std::fs;

use common::{audited, containers_with, database_exists, int, text};
use pgbouncer_fixtures::env_vars::{TEST_DATABASE_URL, TEST_DIRECT_URL};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{Env, Isolation, Stack, StackSettings, Target, TestDb};
use sqlx::{Connection, PgConnection};

#[test]
fn dotenv_is_found_in_parents_and_the_process_environment_wins() {
    let root = tempfile::tempdir().unwrap();
    fs::write(
        root.path().join(".env"),
        "TEST_DATABASE_URL=postgres://app:from-dotenv@db.example:6543/app\nPGBF_POOL_MODE=session\n",
    )
    .unwrap();
    let nested = root.path().join("crates/app/tests");
    fs::create_dir_all(&nested).unwrap();

    let only_dotenv = Env::load_from(&nested, Vec::new()).unwrap();
    assert_eq!(
        only_dotenv.dotenv_path(),
        Some(root.path().join(".env").as_path())
    );
    assert_eq!(
        only_dotenv.get(TEST_DATABASE_URL),
        Some("postgres://app:from-dotenv@db.example:6543/app")
    );
    assert_eq!(only_dotenv.get("PGBF_POOL_MODE"), Some("session"));

    let process = vec![(
        TEST_DATABASE_URL.to_string(),
        "postgres://app:from-process@other.example:6543/app".to_string(),
    )];
    let both = Env::load_from(&nested, process).unwrap();
    assert_eq!(
        both.get(TEST_DATABASE_URL),
        Some("postgres://app:from-process@other.example:6543/app"),
        "a variable already in the process environment wins over .env"
    );
    assert_eq!(
        both.get("PGBF_POOL_MODE"),
        Some("session"),
        ".env still fills the rest"
    );

    let elsewhere = tempfile::tempdir().unwrap();
    let none = Env::load_from(elsewhere.path(), Vec::new()).unwrap();
    assert_eq!(none.get(TEST_DATABASE_URL), None);
}

#[test]
fn a_broken_dotenv_is_a_typed_error() {
    let root = tempfile::tempdir().unwrap();
    fs::write(
        root.path().join(".env"),
        "TEST_DATABASE_URL='unterminated\n",
    )
    .unwrap();
    let err = Env::load_from(root.path(), Vec::new()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(".env") && msg.contains("KEY=VALUE"), "{msg}");
}

#[test]
fn the_target_follows_the_environment() {
    match Target::resolve(&Env::from_vars([("PGBF_MAX_PREPARED_STATEMENTS", "200")])).unwrap() {
        Target::Containers(settings) => assert_eq!(settings.max_prepared_statements, 200),
        other => panic!("expected containers, got {other:?}"),
    }
    let env = Env::from_vars([
        (
            TEST_DATABASE_URL,
            "postgres://postgres.ref:pw@aws-0.pooler.example:6543/postgres",
        ),
        (
            TEST_DIRECT_URL,
            "postgres://postgres.ref:pw@aws-0.pooler.example:5432/postgres",
        ),
    ]);
    match Target::resolve(&env).unwrap() {
        Target::External(ext) => {
            assert_eq!(ext.pooled.port(), 6543);
            assert_eq!(ext.direct.as_ref().map(|d| d.port()), Some(5432));
            assert!(
                !ext.create_databases,
                "creating databases on an external server is opt-in"
            );
        }
        other => panic!("expected an external target, got {other:?}"),
    }
}

/// The two tests that start stacks take turns: the first counts the
/// containers this process created (label `pgbouncer-fixtures.pid`).
static STACK_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn containers_of_this_process() -> Vec<String> {
    containers_with(&format!("pgbouncer-fixtures.pid={}", std::process::id()))
}

/// Points `TEST_DATABASE_URL` (only) at a running stack's pooled URL.
#[tokio::test]
async fn external_target_starts_nothing_and_drops_only_its_own_schema() {
    let _turn = STACK_TESTS.lock().await;
    let stack = Stack::start(StackSettings::default()).await.unwrap();
    let e = stack.endpoints();
    let containers_before = containers_of_this_process();

    // Objects the crate did not create, which must survive.
    let mut owner = PgConnection::connect(e.direct_url("postgres").expose())
        .await
        .unwrap();
    sqlx::raw_sql("create table public.keep_me (x int)")
        .execute(&mut owner)
        .await
        .unwrap();
    sqlx::raw_sql("create database users_own_db")
        .execute(&mut owner)
        .await
        .unwrap();

    let env = Env::from_vars([(TEST_DATABASE_URL, e.pooled_url("postgres").expose())]);
    let target = Target::resolve(&env).unwrap();
    let db = TestDb::builder()
        .target(target)
        .test_name("external")
        .build()
        .await
        .unwrap();
    let schema = db
        .schema()
        .expect("a schema per test by default")
        .to_string();
    assert!(matches!(db.isolation(), Isolation::Schema(_)));
    assert_eq!(db.database_name(), "postgres", "no database was created");

    // The test works in its schema through the pooler.
    let mut conn = db.connect().await.unwrap();
    sqlx::raw_sql(audited(&format!(
        "create table \"{schema}\".items (id int); insert into \"{schema}\".items values (1)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        int(
            &mut conn,
            &format!("select count(*) from \"{schema}\".items")
        )
        .await,
        1
    );
    assert!(matches!(
        db.connect_direct().await,
        Err(pgbouncer_fixtures::Error::DirectUrlRequired { .. })
    ));
    drop(conn);
    db.close().await.unwrap();

    // Only the schema went away.
    assert_eq!(
        int(
            &mut owner,
            &format!("select count(*) from pg_namespace where nspname = '{schema}'")
        )
        .await,
        0
    );
    assert_eq!(
        text(&mut owner, "select to_regclass('public.keep_me')::text")
            .await
            .as_deref(),
        Some("keep_me")
    );
    assert!(database_exists(&mut owner, "users_own_db").await);
    assert_eq!(
        containers_of_this_process(),
        containers_before,
        "no container was started"
    );

    sqlx::raw_sql("drop database users_own_db")
        .execute(&mut owner)
        .await
        .unwrap();
    drop(owner);
    stack.stop().await.unwrap();
}

/// With the opt-in and a direct URL, each test gets a database the crate
/// creates and drops, and nothing else is touched.
#[tokio::test]
async fn external_target_databases_are_opt_in() {
    let _turn = STACK_TESTS.lock().await;
    let stack = Stack::start(StackSettings::default()).await.unwrap();
    let e = stack.endpoints();
    let mut owner = PgConnection::connect(e.direct_url("postgres").expose())
        .await
        .unwrap();
    let before = int(&mut owner, "select count(*) from pg_database").await;

    let env = Env::from_vars([
        (TEST_DATABASE_URL, e.pooled_url("postgres").expose()),
        (TEST_DIRECT_URL, e.direct_url("postgres").expose()),
        ("PGBF_EXTERNAL_CREATE_DATABASES", "1"),
    ]);
    let db = TestDb::builder()
        .target(Target::resolve(&env).unwrap())
        .test_name("opt_in")
        .build()
        .await
        .unwrap();
    let name = db.database_name();
    assert!(database_exists(&mut owner, &name).await);
    let mut conn = db.connect().await.unwrap();
    assert_eq!(
        text(&mut conn, "select current_database()::text")
            .await
            .unwrap(),
        name
    );
    drop(conn);
    db.close().await.unwrap();
    assert!(!database_exists(&mut owner, &name).await);
    assert_eq!(
        int(&mut owner, "select count(*) from pg_database").await,
        before
    );
    drop(owner);
    stack.stop().await.unwrap();
}
