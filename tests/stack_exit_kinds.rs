//! A test process that ends the way `.ci/exit-kinds` asks (normal end,
//! panic, or hanging until a signal), always with a connection left open.
//! Ignored by default: the script runs it and measures what is left after.

use std::time::Duration;

use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;

#[rstest]
#[tokio::test]
#[ignore = "run by .ci/exit-kinds, which measures the reaping"]
async fn exit_kind_probe(#[future(awt)] test_db: TestDb) {
    let mut conn = test_db.connect().await.unwrap();
    sqlx::raw_sql("select 1").execute(&mut conn).await.unwrap();
    match std::env::var("PGBF_EXIT_KIND").as_deref() {
        Ok("panic") => panic!("deliberate panic with a connection open"),
        Ok("hang") => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            unreachable!("the script signals this process long before");
        }
        _ => std::mem::forget(conn), // a normal end that never closes its connection
    }
}
