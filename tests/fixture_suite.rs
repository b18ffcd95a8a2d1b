//! The run-wide suite: 64 tests, each with its own database on the run's one
//! shared stack. `.ci/run` runs it under `cargo nextest run` (a process per
//! test) and counts the containers the run created: one PostgreSQL and one
//! PgBouncer, whatever the number of processes.

mod common;

use std::time::Duration;

use common::{audited, database_exists, database_gone_within, int, server_admin, text};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;
use sqlx::Connection;

/// Rows written through the pooler in a transaction are read back, in a
/// table no other test sees.
#[rstest]
#[tokio::test]
async fn rows_round_trip_through_the_pooler(
    #[values(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)] n: i64,
    #[future(awt)] test_db: TestDb,
) {
    let mut direct = test_db.connect_direct().await.unwrap();
    assert_eq!(
        text(&mut direct, "select to_regclass('items')::text").await,
        None,
        "a fresh database"
    );
    sqlx::raw_sql("create table items (n int8 primary key)")
        .execute(&mut direct)
        .await
        .unwrap();
    let mut pooled = test_db.connect().await.unwrap();
    let mut tx = pooled.begin().await.unwrap();
    sqlx::raw_sql(audited(&format!(
        "insert into items select generate_series(1, {n})"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(int(&mut pooled, "select count(*) from items").await, n);
    assert_eq!(
        int(&mut direct, "select sum(n)::int8 from items").await,
        n * (n + 1) / 2
    );
}

/// `SET LOCAL` lives exactly as long as its transaction, through the pooler.
#[rstest]
#[tokio::test]
async fn set_local_ends_with_its_transaction(
    #[values(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)] n: i64,
    #[future(awt)] test_db: TestDb,
) {
    let mut conn = test_db.connect().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::raw_sql(audited(&format!("set local statement_timeout = '{n}s'")))
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        text(&mut tx, "select current_setting('statement_timeout')")
            .await
            .unwrap(),
        format!("{n}s")
    );
    tx.commit().await.unwrap();
    assert_eq!(
        text(&mut conn, "select current_setting('statement_timeout')")
            .await
            .unwrap(),
        "0"
    );
}

/// Both endpoints reach the test's own database, named after the test.
#[rstest]
#[tokio::test]
async fn both_endpoints_reach_the_same_own_database(
    #[values(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)] n: i64,
    #[future(awt)] test_db: TestDb,
) {
    let name = test_db.database_name();
    assert!(name.starts_with("pgbf_"), "{name}");
    let mut pooled = test_db.connect().await.unwrap();
    let mut direct = test_db.connect_direct().await.unwrap();
    for conn in [&mut pooled, &mut direct] {
        assert_eq!(
            text(conn, "select current_database()::text").await.unwrap(),
            name
        );
    }
    sqlx::raw_sql(audited(&format!(
        "create table marker (n int8); insert into marker values ({n})"
    )))
    .execute(&mut direct)
    .await
    .unwrap();
    assert_eq!(int(&mut pooled, "select n from marker").await, n);
}

/// Connections left open (one idle, one mid-transaction holding a lock) do
/// not stop the test's database from being dropped with its handle.
#[rstest]
#[tokio::test]
async fn open_connections_do_not_block_the_drop(
    #[values(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)] n: i64,
    #[future(awt)] test_db: TestDb,
) {
    let name = test_db.database_name();
    let mut admin = server_admin(&test_db).await;
    let mut idle = test_db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut idle).await.unwrap();
    let mut locker = test_db.connect_direct().await.unwrap();
    sqlx::raw_sql(audited(&format!(
        "create table t (n int8); begin; insert into t values ({n}); lock table t in access exclusive mode"
    )))
    .execute(&mut locker)
    .await
    .unwrap();
    assert!(database_exists(&mut admin, &name).await);
    drop(test_db);
    // Dropped in the background, soon after the handle.
    assert!(
        database_gone_within(&mut admin, &name, Duration::from_secs(30)).await,
        "{name} dropped"
    );
    // The connections are still "open" on the client side; they are simply dead.
    assert!(sqlx::raw_sql("select 1")
        .execute(&mut locker)
        .await
        .is_err());
}
