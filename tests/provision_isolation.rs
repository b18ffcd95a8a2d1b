//! Each test gets its own database, reached through both endpoints, and it is
//! gone afterwards.

mod common;

use std::time::Duration;

use common::{audited, database_exists, database_gone_within, int, server_admin, text};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;

#[rstest]
#[tokio::test]
async fn both_endpoints_reach_the_tests_own_database(#[future(awt)] test_db: TestDb) {
    let name = test_db.database_name();
    assert!(name.starts_with("pgbf_both_endpoints_reach"), "{name}");
    let mut pooled = test_db.connect().await.unwrap();
    let mut direct = test_db.connect_direct().await.unwrap();
    assert_eq!(
        text(&mut pooled, "select current_database()::text")
            .await
            .unwrap(),
        name
    );
    assert_eq!(
        text(&mut direct, "select current_database()::text")
            .await
            .unwrap(),
        name
    );

    // What one endpoint writes, the other reads: one database behind both.
    sqlx::raw_sql("create table t (x int); insert into t values (1), (2)")
        .execute(&mut direct)
        .await
        .unwrap();
    assert_eq!(int(&mut pooled, "select count(*) from t").await, 2);
}

/// Both cases create the same table name; run concurrently, they would clash
/// if they shared a database.
#[rstest]
#[case::first(1)]
#[case::second(2)]
#[case::third(3)]
#[tokio::test]
async fn same_table_name_in_every_test(#[case] n: i64, #[future(awt)] test_db: TestDb) {
    let mut conn = test_db.connect().await.unwrap();
    assert_eq!(
        int(
            &mut conn,
            "select count(*) from pg_tables where tablename = 'shared_name'"
        )
        .await,
        0
    );
    sqlx::raw_sql(audited(&format!(
        "create table shared_name (n int8); insert into shared_name values ({n})"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        int(&mut conn, "select sum(n)::int8 from shared_name").await,
        n
    );
}

#[tokio::test]
async fn two_databases_never_see_each_others_tables() {
    let a = TestDb::builder()
        .test_name("isolation_a")
        .build()
        .await
        .unwrap();
    let b = TestDb::builder()
        .test_name("isolation_b")
        .build()
        .await
        .unwrap();
    assert_ne!(a.database_name(), b.database_name());
    let mut ca = a.connect().await.unwrap();
    let mut cb = b.connect().await.unwrap();
    sqlx::raw_sql("create table only_in_a (x int)")
        .execute(&mut ca)
        .await
        .unwrap();
    assert_eq!(
        text(&mut cb, "select to_regclass('only_in_a')::text").await,
        None
    );
    assert_eq!(
        text(&mut ca, "select to_regclass('only_in_a')::text")
            .await
            .as_deref(),
        Some("only_in_a")
    );
}

#[tokio::test]
async fn the_database_is_gone_after_the_test() {
    // Dropping the handle drops the database (in the background: the test
    // does not wait), even with connections still open.
    let db = TestDb::new().await.unwrap();
    let name = db.database_name();
    let mut admin = server_admin(&db).await;
    let mut open_pooled = db.connect().await.unwrap();
    let mut open_direct = db.connect_direct().await.unwrap();
    sqlx::raw_sql("select 1")
        .execute(&mut open_pooled)
        .await
        .unwrap();
    sqlx::raw_sql("select 1")
        .execute(&mut open_direct)
        .await
        .unwrap();
    assert!(database_exists(&mut admin, &name).await);
    drop(db);
    assert!(
        database_gone_within(&mut admin, &name, Duration::from_secs(30)).await,
        "{name} was dropped with its handle"
    );

    // close() does the same and reports errors.
    let db = TestDb::new().await.unwrap();
    let name = db.database_name();
    assert!(database_exists(&mut admin, &name).await);
    db.close().await.unwrap();
    assert!(
        !database_exists(&mut admin, &name).await,
        "{name} was dropped by close()"
    );
}
