//! PgBouncer really pools by transaction.

mod common;

use common::{int, one, text};
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;
use sqlx::{Connection, PgConnection, Row};

#[rstest]
#[tokio::test]
async fn admin_console_reports_transaction_pooling(#[future(awt)] test_db: TestDb) {
    // Make PgBouncer open the pool of the test's database.
    let mut conn = test_db.connect().await.unwrap();
    assert_eq!(int(&mut conn, "select 7::int8").await, 7);

    let admin_options = test_db.connect_options().database("pgbouncer");
    let mut admin = PgConnection::connect_with(&admin_options).await.unwrap();
    let pools = sqlx::raw_sql("SHOW POOLS")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    let mode = pools
        .iter()
        .find(|row| row.get::<String, _>("database") == test_db.database_name())
        .map(|row| row.get::<String, _>("pool_mode"))
        .expect("SHOW POOLS lists the test's database");
    assert_eq!(mode, "transaction");

    // PgBouncer's janitor parks an auto-database (our wildcard entry) off the
    // SHOW DATABASES list when it catches it without an active pool, e.g.
    // between registration and login; the next client login brings it back.
    let mut listed = Vec::new();
    let mut held = vec![conn];
    for _ in 0..5 {
        let databases = sqlx::raw_sql("SHOW DATABASES")
            .fetch_all(&mut admin)
            .await
            .unwrap();
        listed = databases
            .iter()
            .map(|row| row.get::<String, _>("name"))
            .collect();
        if listed.contains(&test_db.database_name()) {
            break;
        }
        let mut again = test_db.connect().await.unwrap();
        sqlx::raw_sql("begin").execute(&mut again).await.unwrap();
        held.push(again);
    }
    assert!(
        listed.contains(&test_db.database_name()),
        "SHOW DATABASES lists the test's database: {listed:?}"
    );
}

#[rstest]
#[tokio::test]
async fn session_state_does_not_follow_a_pooled_client(#[future(awt)] test_db: TestDb) {
    let mut a = test_db.connect().await.unwrap();
    let mut b = test_db.connect().await.unwrap();

    // A sets session state and learns which server connection it used.
    sqlx::raw_sql("set pgbf.marker = 'from-a'")
        .execute(&mut a)
        .await
        .unwrap();
    let pid_before = one(&mut a, "select pg_backend_pid()")
        .await
        .get::<i32, _>(0);

    // B opens a transaction: PgBouncer hands it the idle server connection A just used.
    sqlx::raw_sql("begin").execute(&mut b).await.unwrap();
    let b_pid = one(&mut b, "select pg_backend_pid()")
        .await
        .get::<i32, _>(0);
    assert_eq!(b_pid, pid_before, "B got the server connection A released");
    // ... and sees A's session state: it lives on the server connection, not the client.
    assert_eq!(
        text(&mut b, "select current_setting('pgbf.marker', true)")
            .await
            .as_deref(),
        Some("from-a")
    );

    // A's next transaction runs on another server connection, without its SET.
    let pid_after = one(&mut a, "select pg_backend_pid()")
        .await
        .get::<i32, _>(0);
    assert_ne!(
        pid_after, pid_before,
        "a pooled client changes backend between transactions"
    );
    let seen = text(&mut a, "select current_setting('pgbf.marker', true)").await;
    assert_ne!(
        seen.as_deref(),
        Some("from-a"),
        "SET did not survive the transaction"
    );
    sqlx::raw_sql("commit").execute(&mut b).await.unwrap();

    // Straight on Postgres, the same SET stays with the session.
    let mut direct = test_db.connect_direct().await.unwrap();
    sqlx::raw_sql("set pgbf.marker = 'direct'")
        .execute(&mut direct)
        .await
        .unwrap();
    let pid1 = one(&mut direct, "select pg_backend_pid()")
        .await
        .get::<i32, _>(0);
    let mut other = test_db.connect_direct().await.unwrap();
    sqlx::raw_sql("begin").execute(&mut other).await.unwrap();
    assert_eq!(
        text(&mut direct, "select current_setting('pgbf.marker', true)")
            .await
            .as_deref(),
        Some("direct")
    );
    assert_eq!(
        one(&mut direct, "select pg_backend_pid()")
            .await
            .get::<i32, _>(0),
        pid1
    );
    sqlx::raw_sql("commit").execute(&mut other).await.unwrap();
}

#[rstest]
#[tokio::test]
async fn connections_carry_the_test_name_and_no_refused_parameters(#[future(awt)] test_db: TestDb) {
    let mut conn = test_db.connect().await.unwrap();
    let app = text(&mut conn, "select current_setting('application_name')")
        .await
        .unwrap();
    // The crate names each connection after its test; behind the default
    // profile the server sees `Supavisor`, as behind Supabase's shared pooler.
    let sent = test_db.connect_options();
    let sent = sent.get_application_name().unwrap_or_default();
    assert!(
        sent.ends_with("connections_carry_the_test_name_and_no_refused_parameters"),
        "application_name is the test's name, got {sent:?}"
    );
    assert_eq!(app, "Supavisor");
}
